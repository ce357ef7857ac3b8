"""Load and check YAML dialplans; every problem is reported as `file:line:column: message`.

All problems of a file are collected before raising, so an author fixes a dialplan in one pass.
A `Dialplan` that loaded is consistent: every `next`/`on_fail` names a step, every template
uses known filters and variables, every grammar exists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.dialog.checks import check_plan
from app.dialog.parsing import MAX_DIGITS, StepParser
from app.dialog.reader import VARIABLE_NAME, Reader, kind_name, suggest
from app.dialog.steps import CALL_VARIABLES, AgentHandler, Handlers, Step
from app.dialog.yamlsource import Mark, MarkedList, MarkedMap, YamlSourceError, load_marked

TOP_KEYS = ("description", "language", "voice", "start", "variables", "global", "steps")
__all__ = ["MAX_DIGITS", "Dialplan", "DialplanError", "load_dialplan", "load_dialplans"]


class DialplanError(ValueError):
    """A dialplan (or a folder of them) is invalid; `errors` holds every `file:line:col: ...`."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True, slots=True)
class Dialplan:
    """A checked dialplan. `version` is the SHA-256 of the file, for call records."""

    name: str
    path: Path
    description: str
    start: str
    steps: dict[str, Step]
    version: str
    handlers: Handlers = field(default_factory=Handlers)
    variables: dict[str, str] = field(default_factory=dict)
    """Initial values of the dialplan's own variables (the `variables:` section)."""
    language: str = "en-US"
    """The callers' language (BCP 47), given to the recogniser of every question."""
    voice: str | None = None
    """The TTS voice of this dialplan's prompts (None: each engine's configured voice)."""


def load_dialplans(directory: str | Path) -> dict[str, Dialplan]:
    """Every `*.yaml` / `*.yml` in `directory`, keyed by file stem; errors of all files together."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DialplanError([f"{directory}: dialplan folder not found"])
    plans: dict[str, Dialplan] = {}
    errors: list[str] = []
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    for path in files:
        if path.stem in plans:
            errors.append(
                f"{path}: dialplan {path.stem!r} is defined twice ({plans[path.stem].path})"
            )
            continue
        try:
            plans[path.stem] = load_dialplan(path)
        except DialplanError as exc:
            errors.extend(exc.errors)
    if errors:
        raise DialplanError(errors)
    return plans


def load_dialplan(path: str | Path) -> Dialplan:
    """Load one dialplan file; its name is the file stem."""
    path = Path(path)
    try:
        content = path.read_bytes()
        text = content.decode("utf-8")
    except FileNotFoundError:
        raise DialplanError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise DialplanError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise DialplanError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None

    reader = Reader(path)
    try:
        document, problems = load_marked(text)
    except YamlSourceError as exc:
        reader.error(exc.mark, exc.message)
        raise DialplanError(reader.errors) from None
    for mark, message in problems:
        reader.error(mark, message)
    plan = _build(reader, path, document, hashlib.sha256(content).hexdigest())
    if reader.errors or plan is None:
        raise DialplanError(reader.errors)
    return plan


def _build(reader: Reader, path: Path, document: Any, version: str) -> Dialplan | None:
    if not isinstance(document, MarkedMap):
        where = document.mark if isinstance(document, MarkedList) else Mark(1, 1)
        reader.error(where, f"a dialplan must be a mapping, got {kind_name(document)}")
        return None
    reader.unknown_keys(document, TOP_KEYS, "", "at the top level")
    description = reader.text(document, "description", "") or ""
    language = reader.text(document, "language", "") or "en-US"
    voice = reader.text(document, "voice", "")
    start = reader.required_text(document, "start", "", "the name of the first step")
    variables = _variables(reader, document)
    handlers, handler_marks = _handlers(reader, document)
    if "steps" not in document:
        reader.error(document.mark, "missing 'steps': a mapping of step name -> step")
        return None
    steps_map = reader.mapping(document, "steps", "")
    if steps_map is None:
        return None
    parser = StepParser(reader, path.parent)
    steps: dict[str, Step] = {}
    for name, body in steps_map.items():
        step = parser.parse(name, body, steps_map.key_marks[name], steps_map.value_marks[name])
        if step is not None:
            steps[name] = step
    if start is not None and start not in steps_map:
        reader.error(
            document.value_marks["start"],
            f"start: unknown step {start!r}{suggest(start, [str(n) for n in steps_map])}",
        )
    check_plan(reader, steps_map, steps, start, handlers, handler_marks, variables)
    if start is None:
        return None
    return Dialplan(
        path.stem, path, description, start, steps, version, handlers, variables, language, voice
    )


def _variables(reader: Reader, document: MarkedMap) -> dict[str, str]:
    table = reader.mapping(document, "variables", "")
    values: dict[str, str] = {}
    for name, value in (table or {}).items():
        if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name) or name in CALL_VARIABLES:
            reader.error(table.key_marks[name], f"variables: cannot define {name!r}")
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            reader.error(table.value_marks[name], f"variables: {name}: expected text or a number")
        else:
            values[name] = str(value)
    return values


def _handlers(reader: Reader, document: MarkedMap) -> tuple[Handlers, dict[str, Mark]]:
    """The `global:` section: the agent handler and the maximum call duration."""
    table = reader.mapping(document, "global", "")
    if table is None:
        return Handlers(), {}
    reader.unknown_keys(table, ("agent", "max_duration_s", "on_max_duration"), "global: ", "")
    marks: dict[str, Mark] = {}
    agent = None
    spec = reader.mapping(table, "agent", "global: ")
    if spec is not None:
        reader.unknown_keys(spec, ("dtmf", "say", "goto"), "global: agent: ", "")
        key = reader.text(spec, "dtmf", "global: agent: ", scalar=True)
        if key is not None and (len(key) != 1 or key not in "0123456789*#"):
            reader.error(spec.value_marks["dtmf"], "global: agent: dtmf: one key of 0-9 * #")
        phrases = reader.list_of_text(spec, "say", "global: agent: ")
        goto = reader.required_text(spec, "goto", "global: agent: ", "the step that transfers")
        if goto is not None:
            marks["agent.goto"] = spec.value_marks["goto"]
            agent = AgentHandler(
                dtmf=key if "dtmf" in spec else None,
                phrases=phrases if "say" in spec else (),
                goto=goto,
            )
    max_s = reader.integer(table, "max_duration_s", "global: ", 10, 86_400)
    on_max = reader.text(table, "on_max_duration", "global: ")
    if on_max is not None:
        marks["on_max_duration"] = table.value_marks["on_max_duration"]
        if max_s is None:
            reader.error(
                table.key_marks["on_max_duration"], "global: on_max_duration needs max_duration_s"
            )
    return Handlers(agent=agent, max_duration_s=max_s, on_max_duration=on_max), marks
