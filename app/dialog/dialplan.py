"""Load and check YAML dialplans; every problem is reported as `file:line:column: message`.

All problems of a file are collected before raising, so an author fixes a dialplan in one pass.
A `Dialplan` that loaded is consistent: every `next`/`on_fail` names a step, every template
uses known filters and variables, every grammar exists.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.dialog.steps import (
    BUILTIN_GRAMMARS,
    CALL_VARIABLES,
    AskStep,
    HangupStep,
    SayStep,
    Step,
)
from app.dialog.template import Template, TemplateError, parse_template
from app.dialog.yamlsource import Mark, MarkedList, MarkedMap, YamlSourceError, load_marked

TOP_KEYS = ("description", "start", "steps")
MAX_DIGITS = 64
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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

    checker = _Checker(path)
    try:
        document, problems = load_marked(text)
    except YamlSourceError as exc:
        checker.error(exc.mark, exc.message)
        raise DialplanError(checker.errors) from None
    for mark, message in problems:
        checker.error(mark, message)
    plan = checker.dialplan(document, hashlib.sha256(content).hexdigest())
    if checker.errors or plan is None:
        raise DialplanError(checker.errors)
    return plan


def _suggest(word: object, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind_name(value: Any) -> str:
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


class _Checker:
    """Collects `file:line:col: message` errors while turning marked YAML into steps."""

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

    def dialplan(self, document: Any, version: str) -> Dialplan | None:
        if not isinstance(document, MarkedMap):
            where = document.mark if isinstance(document, MarkedList) else Mark(1, 1)
            self.error(where, f"a dialplan must be a mapping, got {_kind_name(document)}")
            return None
        for key, mark in document.key_marks.items():
            if key not in TOP_KEYS:
                self.error(mark, f"unknown key {key!r}{_suggest(key, TOP_KEYS)}")
        description = ""
        if "description" in document:
            description = self._text(document, "description", "description") or ""
        start = self._required_text(document, "start", "the name of the first step")
        steps_map = document.get("steps")
        if "steps" not in document:
            self.error(document.mark, "missing 'steps': a mapping of step name -> step")
            return None
        if not isinstance(steps_map, MarkedMap) or not steps_map:
            got = "an empty mapping" if isinstance(steps_map, dict) else _kind_name(steps_map)
            self.error(
                document.value_marks["steps"],
                f"'steps' must be a mapping of step name -> step, got {got}",
            )
            return None

        steps: dict[str, Step] = {}
        for name, body in steps_map.items():
            step = self._step(name, body, steps_map.key_marks[name], steps_map.value_marks[name])
            if step is not None:
                steps[name] = step
        names = set(steps_map)
        if start is not None and start not in names:
            self.error(
                document.value_marks["start"],
                f"start: unknown step {start!r}{_suggest(start, [str(n) for n in names])}",
            )
        self._check_references(steps_map, steps)
        if start is None:
            return None
        return Dialplan(self.path.stem, self.path, description, start, steps, version)

    # -- steps --------------------------------------------------------------------------------

    def _step(self, name: Any, body: Any, key_mark: Mark, mark: Mark) -> Step | None:
        if not isinstance(name, str) or not name:
            self.error(key_mark, f"a step name must be text, got {_kind_name(name)} {name!r}")
            return None
        if not isinstance(body, MarkedMap):
            self.error(mark, f"step {name!r}: expected a mapping with one of {_kinds()}")
            return None
        kinds = [key for key in body if key in STEP_KINDS]
        if not kinds:
            unknown = [k for k in body if k not in _COMMON_KEYS]
            hint = _suggest(unknown[0], STEP_KINDS) if unknown else ""
            self.error(body.mark, f"step {name!r}: needs one of {_kinds()}{hint}")
            return None
        if len(kinds) > 1:
            self.error(
                body.key_marks[kinds[1]],
                f"step {name!r}: has both {kinds[0]!r} and {kinds[1]!r}; a step does one thing",
            )
            return None
        kind = kinds[0]
        allowed, parse = STEP_KINDS[kind]
        for key, key_mark_ in body.key_marks.items():
            if key != kind and key not in allowed:
                self.error(
                    key_mark_,
                    f"step {name!r}: unknown key {key!r} for a {kind!r} step"
                    f"{_suggest(key, (*allowed, *STEP_KINDS))}",
                )
        return parse(self, name, body)

    def _say(self, name: str, body: MarkedMap) -> SayStep | None:
        text = self._template(body, "say", name)
        next_ = self._text(body, "next", name)
        if text is None:
            return None
        return SayStep(name=name, line=body.mark.line, next=next_, text=text)

    def _ask(self, name: str, body: MarkedMap) -> AskStep | None:
        prompt = self._template(body, "ask", name)
        grammar = self._text(body, "grammar", name)
        if grammar is not None and grammar not in BUILTIN_GRAMMARS:
            self.error(
                body.value_marks["grammar"],
                f"step {name!r}: unknown grammar {grammar!r}{_suggest(grammar, BUILTIN_GRAMMARS)}"
                f" (built-in: {', '.join(BUILTIN_GRAMMARS)}; or list `phrases`)",
            )
        phrases = self._phrases(body, name)
        if grammar is not None and phrases:
            self.error(body.key_marks["phrases"], f"step {name!r}: use 'grammar' or 'phrases'")
        into = self._text(body, "into", name)
        if into is not None and not _VARIABLE.fullmatch(into):
            self.error(body.value_marks["into"], f"step {name!r}: bad variable name {into!r}")
        elif into in CALL_VARIABLES:
            self.error(
                body.value_marks["into"],
                f"step {name!r}: {into!r} is set by the call; store the answer under another name",
            )
        min_digits = self._int(body, "min_digits", name, 1, MAX_DIGITS)
        max_digits = self._int(body, "max_digits", name, 1, MAX_DIGITS)
        for key in ("min_digits", "max_digits"):
            if key in body and grammar != "digits" and grammar in (None, *BUILTIN_GRAMMARS):
                self.error(body.key_marks[key], f"step {name!r}: {key} needs 'grammar: digits'")
        if min_digits is not None and max_digits is not None and min_digits > max_digits:
            self.error(
                body.value_marks["min_digits"],
                f"step {name!r}: min_digits ({min_digits}) is more than max_digits ({max_digits})",
            )
        retries = self._int(body, "retries", name, 0, 10)
        reprompt = self._template(body, "reprompt", name)
        no_input_ms = self._int(body, "no_input_ms", name, 500, 120_000)
        on_fail = self._text(body, "on_fail", name)
        next_ = self._text(body, "next", name)
        if prompt is None:
            return None
        return AskStep(  # even with errors above: its references are still worth checking
            name=name,
            line=body.mark.line,
            next=next_,
            prompt=prompt,
            grammar=grammar,
            phrases=phrases,
            into=into,
            min_digits=min_digits,
            max_digits=max_digits,
            retries=2 if retries is None else retries,
            reprompt=reprompt,
            on_fail=on_fail,
            no_input_ms=no_input_ms,
        )

    def _hangup(self, name: str, body: MarkedMap) -> HangupStep | None:
        if body["hangup"] is not True:
            self.error(body.value_marks["hangup"], f"step {name!r}: write 'hangup: true'")
            return None
        return HangupStep(name=name, line=body.mark.line)

    # -- cross references ---------------------------------------------------------------------

    def _check_references(self, steps_map: MarkedMap, steps: dict[str, Step]) -> None:
        names = [str(n) for n in steps_map]
        variables = set(CALL_VARIABLES)
        for step in steps.values():
            variables.update(step.assigns())
        known = ", ".join(sorted(variables))
        for name, step in steps.items():
            body = steps_map[name]
            for key, target in step.targets():
                if target not in steps_map:
                    self.error(
                        body.value_marks[key],
                        f"step {name!r}: {key}: unknown step {target!r}{_suggest(target, names)}",
                    )
            for key, template in step.templates():
                for variable in template.variables:
                    if variable not in variables:
                        self.error(
                            body.value_marks[key],
                            f"step {name!r}: {key}: unknown variable {variable!r}"
                            f"{_suggest(variable, variables)} (known: {known})",
                        )

    # -- typed values -------------------------------------------------------------------------

    def _text(self, body: MarkedMap, key: str, step: str) -> str | None:
        if key not in body:
            return None
        value = body[key]
        if not isinstance(value, str) or not value.strip():
            self.error(
                body.value_marks[key], f"{_where(step, key)}expected text, got {_show(value)}"
            )
            return None
        return value.strip()

    def _required_text(self, body: MarkedMap, key: str, what: str) -> str | None:
        if key not in body:
            self.error(body.mark, f"missing {key!r}: {what}")
            return None
        return self._text(body, key, "")

    def _template(self, body: MarkedMap, key: str, step: str) -> Template | None:
        text = self._text(body, key, step)
        if text is None:
            return None
        try:
            return parse_template(text)
        except TemplateError as exc:
            self.error(body.value_marks[key], f"{_where(step, key)}{exc}")
            return None

    def _int(self, body: MarkedMap, key: str, step: str, low: int, high: int) -> int | None:
        if key not in body:
            return None
        value = body[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(body.value_marks[key], f"{_where(step, key)}expected a whole number")
            return None
        if not low <= value <= high:
            self.error(body.value_marks[key], f"{_where(step, key)}must be {low}..{high}")
            return None
        return value

    def _phrases(self, body: MarkedMap, step: str) -> tuple[str, ...]:
        if "phrases" not in body:
            return ()
        value = body["phrases"]
        if not isinstance(value, MarkedList) or not value:
            self.error(body.value_marks["phrases"], f"{_where(step, 'phrases')}expected a list")
            return ()
        phrases = []
        for item, mark in zip(value, value.item_marks, strict=True):
            if not isinstance(item, str) or not item.strip():
                self.error(mark, f"{_where(step, 'phrases')}expected text, got {_show(item)}")
            else:
                phrases.append(" ".join(item.split()))
        return tuple(phrases)


def _where(step: str, key: str) -> str:
    return f"step {step!r}: {key}: " if step else f"{key}: "


def _show(value: Any) -> str:
    if isinstance(value, str):
        return "empty text"
    return f"{_kind_name(value)} {value!r}" if value is not None else "nothing"


def _kinds() -> str:
    return ", ".join(repr(kind) for kind in STEP_KINDS)


_COMMON_KEYS = ("next",)
StepParser = Callable[[_Checker, str, MarkedMap], Step | None]
STEP_KINDS: dict[str, tuple[tuple[str, ...], StepParser]] = {
    "say": (("next",), _Checker._say),
    "ask": (
        (
            "grammar",
            "phrases",
            "into",
            "min_digits",
            "max_digits",
            "retries",
            "reprompt",
            "on_fail",
            "no_input_ms",
            "next",
        ),
        _Checker._ask,
    ),
    "hangup": ((), _Checker._hangup),
}
"""Step kind -> (keys allowed beside the kind key, parser). Add new kinds here."""
