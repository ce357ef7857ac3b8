"""Prompt templates: `{var}` and `{var | filter | ...}`; `{{` and `}}` are literal braces.

Templates are parsed when the dialplan loads, so an unknown filter or a stray brace is a load
error with a line number, never a surprise in the middle of a call.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _digits(value: str) -> str:
    """ "1234" -> "1 2 3 4": the TTS then reads digit by digit, not "one thousand..."."""
    return " ".join(ch for ch in value if not ch.isspace())


def _date(value: str) -> str:
    """ "2026-12-03" -> "Thursday, December 3": how a person says a date (ISO stays ISO for
    webhooks and records; only the spoken form changes). Anything else is left as it is."""
    try:
        day = dt.date.fromisoformat(value.strip())
    except ValueError:
        return value
    return f"{day:%A}, {day:%B} {day.day}"


def _time(value: str) -> str:
    """ "14:30" -> "2:30 PM", "11:00" -> "11 AM", "00:15" -> "12:15 AM"."""
    try:
        moment = dt.time.fromisoformat(value.strip())
    except ValueError:
        return value
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return f"{hour} {half}" if moment.minute == 0 else f"{hour}:{moment.minute:02d} {half}"


FILTERS: dict[str, Callable[[str], str]] = {"digits": _digits, "date": _date, "time": _time}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(ValueError):
    """A template is malformed; the message says what and where in the text."""


@dataclass(frozen=True, slots=True)
class Field:
    """`{name | filter...}`: one substitution."""

    name: str
    filters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text and fields, in order."""

    source: str
    parts: tuple[str | Field, ...]

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(part.name for part in self.parts if isinstance(part, Field))

    def render(
        self, variables: Mapping[str, str], escape: Callable[[str], str] | None = None
    ) -> str:
        """Substitute `variables`; a variable not set on this path renders as "" (and is logged).

        `escape` is applied to each substituted value (e.g. URL quoting), never to the literal
        text around it.
        """
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = variables.get(part.name)
            if value is None:
                log.warning("template %r: variable %r is not set", self.source, part.name)
                value = ""
            text = str(value)
            for name in part.filters:
                text = FILTERS[name](text)
            out.append(escape(text) if escape is not None else text)
        return "".join(out)


def parse_template(source: str) -> Template:
    """Parse `source`; raise `TemplateError` on a stray brace, a bad name or an unknown filter."""
    parts: list[str | Field] = []
    literal: list[str] = []
    i = 0
    while i < len(source):
        ch = source[i]
        if ch in "{}" and source.startswith(ch * 2, i):
            literal.append(ch)
            i += 2
            continue
        if ch == "}":
            raise TemplateError(f"unmatched '}}' at character {i + 1} (write '}}}}' for a brace)")
        if ch != "{":
            literal.append(ch)
            i += 1
            continue
        end = source.find("}", i + 1)
        if end < 0:
            raise TemplateError(f"unclosed '{{' at character {i + 1} (write '{{{{' for a brace)")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(_parse_field(source[i + 1 : end], i + 1))
        i = end + 1
    if literal:
        parts.append("".join(literal))
    return Template(source, tuple(parts))


def _parse_field(body: str, position: int) -> Field:
    name, *filters = (piece.strip() for piece in body.split("|"))
    if not _NAME.fullmatch(name):
        raise TemplateError(f"bad variable name {name!r} in '{{{body}}}' at character {position}")
    for filter_name in filters:
        if filter_name not in FILTERS:
            known = ", ".join(sorted(FILTERS))
            raise TemplateError(
                f"unknown filter {filter_name!r} in '{{{body}}}' (known filters: {known})"
            )
    return Field(name, tuple(filters))
