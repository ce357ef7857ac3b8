"""YAML loading that remembers where every key and value came from (line, column).

Dialplans are written by hand; an error must point at `file:line:column`. PyYAML's nodes carry
marks but its plain dicts drop them, so mappings and sequences are built as `MarkedMap` and
`MarkedList`, which keep the marks beside the data.

Two deliberate departures from PyYAML's YAML 1.1 defaults, because they bite prompt authors:
only `true`/`false` are booleans (`phrases: [yes, no]` stays text, as in YAML 1.2), and a
duplicate key is reported instead of silently overwriting the first.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode


@dataclass(frozen=True, slots=True)
class Mark:
    """A 1-based position in a source file."""

    line: int
    column: int

    @classmethod
    def of(cls, mark: yaml.Mark | None) -> Mark:
        if mark is None:
            return cls(1, 1)
        return cls(mark.line + 1, mark.column + 1)


class MarkedMap(dict):
    """A mapping with the position of itself, of each key and of each value."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.key_marks: dict[Any, Mark] = {}
        self.value_marks: dict[Any, Mark] = {}


class MarkedList(list):
    """A sequence with the position of itself and of each item."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.item_marks: list[Mark] = []


class YamlSourceError(ValueError):
    """The text is not valid YAML; `mark` is where the parser gave up."""

    def __init__(self, message: str, mark: Mark) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


_BOOL = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[tuple[Mark, str]] = []

    def construct_marked_map(self, node: MappingNode) -> Any:
        data = MarkedMap(Mark.of(node.start_mark))
        yield data
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            key_mark = Mark.of(key_node.start_mark)
            if not isinstance(key, Hashable):
                self.problems.append((key_mark, "a mapping key must be a plain value"))
                continue
            if key in data:
                first = data.key_marks[key]
                self.problems.append(
                    (key_mark, f"duplicate key {key!r} (first defined at line {first.line})")
                )
                continue
            data[key] = self.construct_object(value_node, deep=True)
            data.key_marks[key] = key_mark
            data.value_marks[key] = Mark.of(value_node.start_mark)

    def construct_marked_list(self, node: SequenceNode) -> Any:
        data = MarkedList(Mark.of(node.start_mark))
        yield data
        for item in node.value:
            data.append(self.construct_object(item, deep=True))
            data.item_marks.append(Mark.of(item.start_mark))


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_marked_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_marked_list)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_marked(text: str) -> tuple[Any, list[tuple[Mark, str]]]:
    """Parse one YAML document into marked containers.

    Returns the data (None for an empty document) and the non-fatal problems found (duplicate
    keys). Raises `YamlSourceError` for a syntax error.
    """
    loader = _Loader(text)
    try:
        node: Node | None = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            started = ""
            if exc.context_mark is not None and exc.context_mark is not mark:
                start = Mark.of(exc.context_mark)
                started = f" started at line {start.line}, column {start.column}"
            message = f"{exc.problem} ({exc.context}{started})"
        raise YamlSourceError(message, Mark.of(mark)) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(str(exc), Mark(1, 1)) from None
    finally:
        loader.dispose()
    return data, loader.problems
