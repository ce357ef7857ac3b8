"""Dialled number -> dialplan name, from `sip_config/routes.toml`. Pure Python, no pjsua2.

Exact numbers are tried before patterns, and patterns in file order, so a specific number can
be carved out of a broad range. A pattern must match the WHOLE user part (`re.fullmatch`): a
pattern like `44` never routes `4420...` by accident.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

ROUTE_KEYS = ("number", "pattern", "dialplan")


class RoutesError(ValueError):
    """The routes file is missing or invalid. `errors` lists every problem found."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class Route:
    """One `[[route]]`: exactly one of `number` / `pattern`. `index` is 1-based, as in errors."""

    index: int
    dialplan: str
    number: str | None = None
    pattern: re.Pattern[str] | None = None

    def matches(self, user_part: str) -> bool:
        if self.number is not None:
            return user_part == self.number
        return self.pattern is not None and self.pattern.fullmatch(user_part) is not None


class RouteTable:
    """Immutable lookup table; safe to share between threads."""

    def __init__(self, routes: Sequence[Route], source: Path | None = None) -> None:
        self.routes = tuple(routes)
        self.source = source
        self._numbers = {r.number: r.dialplan for r in self.routes if r.number is not None}
        self._patterns = tuple(r for r in self.routes if r.pattern is not None)

    @classmethod
    def load(cls, path: str | Path, known_dialplans: Collection[str]) -> RouteTable:
        """Parse and check `path`; every route must name a dialplan in `known_dialplans`."""
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RoutesError([f"{path}: routes file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RoutesError([f"{path}: cannot read routes file: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise RoutesError([f"{path}: invalid TOML: {exc}"]) from None

        errors: list[str] = []
        for key in document:
            if key != "route":
                errors.append(f"{path}: unknown key {key!r}{_suggest(key, ['route'])}")
        entries = document.get("route", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            errors.append(f"{path}: 'route' must be a list of [[route]] tables")
            entries = []
        elif not entries and not errors:
            errors.append(f"{path}: no [[route]] entries: every call would be rejected")

        routes: list[Route] = []
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries, start=1):
            route = _parse_route(entry, index, known_dialplans, f"{path}: route #{index}", errors)
            if route is None:
                continue
            if route.number is not None and route.number in seen:
                errors.append(
                    f"{path}: route #{index}: number {route.number!r} already routed by"
                    f" route #{seen[route.number]}"
                )
                continue
            if route.number is not None:
                seen[route.number] = index
            routes.append(route)
        if errors:
            raise RoutesError(errors)
        return cls(routes, path)

    def lookup(self, user_part: str) -> str | None:
        """The dialplan for a dialled user part, or None (answer 404)."""
        dialplan = self._numbers.get(user_part)
        if dialplan is not None:
            return dialplan
        for route in self._patterns:
            if route.matches(user_part):
                return route.dialplan
        return None


def _parse_route(
    entry: dict, index: int, known: Collection[str], where: str, errors: list[str]
) -> Route | None:
    before = len(errors)
    for key in entry:
        if key not in ROUTE_KEYS:
            errors.append(f"{where}: unknown key {key!r}{_suggest(key, ROUTE_KEYS)}")
    number, pattern, dialplan = entry.get("number"), entry.get("pattern"), entry.get("dialplan")

    if (number is None) == (pattern is None):
        errors.append(f"{where}: needs exactly one of 'number' or 'pattern'")
    if number is not None and (not isinstance(number, str) or not number):
        errors.append(f'{where}: number must be a non-empty string (quote it: "{number}")')
    compiled = None
    if isinstance(pattern, str):
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            errors.append(f"{where}: bad pattern {pattern!r}: {exc}")
    elif pattern is not None:
        errors.append(f"{where}: pattern must be a string")

    if not isinstance(dialplan, str) or not dialplan:
        errors.append(f"{where}: needs 'dialplan', the name of a dialplan")
    elif dialplan not in known:
        hint = _suggest(dialplan, known)
        available = ", ".join(sorted(known)) or "none loaded"
        errors.append(f"{where}: unknown dialplan {dialplan!r}{hint} (available: {available})")

    if len(errors) > before:
        return None
    return Route(index=index, dialplan=dialplan, number=number, pattern=compiled)


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_SCHEME = re.compile(r"^(sips?|tel):(.*)$", re.IGNORECASE | re.DOTALL)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TEL_SEPARATORS = re.compile(r"[-.()]")


def request_uri_user(uri: str) -> str:
    """The user part of a `sip:`, `sips:` or `tel:` URI, percent-decoded.

    `sip:1000@host;transport=tcp` -> "1000"; `tel:+44-20-7946-0000;phone-context=x` ->
    "+442079460000" (tel visual separators removed); `<sip:...>` brackets are accepted.
    A user part's own parameters (`sip:+4420;isub=1@host`) are dropped. Raises ValueError
    on anything else, including a SIP URI without a user part.
    """
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    match = _SCHEME.match(text)
    if match is None:
        raise ValueError(f"not a sip:, sips: or tel: URI: {uri[:80]!r}")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "tel":
        user = rest.split(";", 1)[0]
    else:
        userinfo, at, _host = rest.partition("@")
        if not at or not _host:
            raise ValueError(f"SIP URI has no user part: {uri[:80]!r}")
        user = userinfo.split(":", 1)[0].split(";", 1)[0]
    if _BAD_ESCAPE.search(user):
        raise ValueError(f"bad percent-escape in URI user part: {uri[:80]!r}")
    try:
        user = unquote(user, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"URI user part is not UTF-8: {uri[:80]!r}") from None
    if scheme == "tel":
        user = _TEL_SEPARATORS.sub("", user)
    if not user or any(ch.isspace() or not ch.isprintable() or ch in '<>"' for ch in user):
        raise ValueError(f"empty or invalid URI user part: {uri[:80]!r}")
    return user
