"""Typed reading of marked YAML: every wrong value becomes a `file:line:column` message.

The dialplan parser asks a `Reader` for "the text under key x", "a whole number in 1..10" and
so on; the reader records a precise error and returns None instead of raising, so one pass over
a file reports every mistake in it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from app.dialog.template import Template, TemplateError, parse_template
from app.dialog.yamlsource import Mark, MarkedList, MarkedMap

VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def suggest(word: object, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def kind_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "text"


def show(value: Any) -> str:
    if isinstance(value, str):
        return "empty text"
    return f"{kind_name(value)} {value!r}" if value is not None else "nothing"


class Reader:
    """Collects errors for one file while values are read out of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._problems: list[tuple[Mark, str]] = []

    def error(self, mark: Mark, message: str) -> None:
        self._problems.append((mark, message))

    @property
    def errors(self) -> list[str]:
        """In file order, so the list reads top to bottom like the file."""
        ordered = sorted(self._problems, key=lambda problem: (problem[0].line, problem[0].column))
        return [f"{self.path}:{m.line}:{m.column}: {message}" for m, message in ordered]

    # -- scalar values -------------------------------------------------------------------------

    def text(self, body: MarkedMap, key: str, where: str, *, scalar: bool = False) -> str | None:
        """Non-empty text (stripped). `scalar`: numbers are taken as their text ("0", "42")."""
        if key not in body:
            return None
        value = body[key]
        if scalar and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            self.error(body.value_marks[key], f"{where}{key}: expected text, got {show(value)}")
            return None
        return value.strip()

    def required_text(self, body: MarkedMap, key: str, where: str, what: str) -> str | None:
        if key not in body:
            self.error(body.mark, f"{where}missing {key!r}: {what}")
            return None
        return self.text(body, key, where)

    def template(self, body: MarkedMap, key: str, where: str) -> Template | None:
        text = self.text(body, key, where)
        if text is None:
            return None
        return self.template_of(text, body.value_marks[key], f"{where}{key}: ")

    def template_of(self, text: str, mark: Mark, where: str) -> Template | None:
        try:
            return parse_template(text)
        except TemplateError as exc:
            self.error(mark, f"{where}{exc}")
            return None

    def templates(self, body: MarkedMap, key: str, where: str) -> tuple[Template, ...]:
        """One template or a list of them (e.g. reprompts, one per retry)."""
        if key not in body:
            return ()
        value = body[key]
        if isinstance(value, str):
            template = self.template(body, key, where)
            return (template,) if template is not None else ()
        items = self.list_of_text(body, key, where)
        marks = value.item_marks if isinstance(value, MarkedList) else []
        out = []
        for text, mark in zip(items, marks, strict=False):
            template = self.template_of(text, mark, f"{where}{key}: ")
            if template is not None:
                out.append(template)
        return tuple(out)

    def integer(self, body: MarkedMap, key: str, where: str, low: int, high: int) -> int | None:
        if key not in body:
            return None
        value = body[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(body.value_marks[key], f"{where}{key}: expected a whole number")
            return None
        if not low <= value <= high:
            self.error(body.value_marks[key], f"{where}{key}: must be {low}..{high}")
            return None
        return value

    def boolean(self, body: MarkedMap, key: str, where: str) -> bool | None:
        if key not in body:
            return None
        value = body[key]
        if not isinstance(value, bool):
            self.error(body.value_marks[key], f"{where}{key}: write true or false")
            return None
        return value

    def one_of(self, body: MarkedMap, key: str, where: str, allowed: Collection[str]) -> str | None:
        value = self.text(body, key, where)
        if value is not None and value not in allowed:
            self.error(
                body.value_marks[key],
                f"{where}{key}: {value!r} is not one of {', '.join(sorted(allowed))}"
                f"{suggest(value, allowed)}",
            )
            return None
        return value

    def variable(
        self, body: MarkedMap, key: str, where: str, reserved: Collection[str]
    ) -> str | None:
        name = self.text(body, key, where)
        if name is None:
            return None
        if not VARIABLE_NAME.fullmatch(name):
            self.error(body.value_marks[key], f"{where}{key}: bad variable name {name!r}")
            return None
        if name in reserved:
            self.error(
                body.value_marks[key],
                f"{where}{key}: {name!r} is set by the call; store the answer under another name",
            )
            return None
        return name

    # -- containers ----------------------------------------------------------------------------

    def mapping(self, body: MarkedMap, key: str, where: str) -> MarkedMap | None:
        if key not in body:
            return None
        value = body[key]
        if not isinstance(value, MarkedMap) or not value:
            got = "an empty mapping" if isinstance(value, dict) else kind_name(value)
            self.error(body.value_marks[key], f"{where}{key}: expected a mapping, got {got}")
            return None
        return value

    def list_of_text(self, body: MarkedMap, key: str, where: str) -> tuple[str, ...]:
        """A list of non-empty texts (a single text is a list of one)."""
        if key not in body:
            return ()
        value = body[key]
        if isinstance(value, str) and value.strip():
            return (" ".join(value.split()),)
        if not isinstance(value, MarkedList) or not value:
            self.error(body.value_marks[key], f"{where}{key}: expected a list of texts")
            return ()
        items = []
        for item, mark in zip(value, value.item_marks, strict=True):
            if isinstance(item, int | float) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str) or not item.strip():
                self.error(mark, f"{where}{key}: expected text, got {show(item)}")
            else:
                items.append(" ".join(item.split()))
        return tuple(items)

    def unknown_keys(
        self, body: MarkedMap, allowed: Collection[str], where: str, what: str
    ) -> None:
        for key, mark in body.key_marks.items():
            if key not in allowed:
                self.error(mark, f"{where}unknown key {key!r} {what}{suggest(key, allowed)}")
