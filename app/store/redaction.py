"""PII redaction of call records, applied before anything is written (spool or database).

Call records keep what callers said (transcripts), what the bot said (prompts, which echo
answers back), dialplan variables and step details. For a bank, an insurer or a clinic those
records are only worth keeping if they do not become a store of card numbers and identity
numbers, so every text field goes through a `Redactor` first and each match becomes
`[redacted:<rule>]` (custom patterns: `[redacted]`).

Why validation and not just shapes: a record whose account numbers, amounts, dates, policy
references and times were blanked out is useless to the operator reading it. A rule therefore
finds candidates by shape and redacts only those that pass the scheme's own check, which random
digits almost never do: the Luhn check for cards (1 in 10), ISO 7064 mod-97 plus the country's
fixed length for IBANs (about 1 in 97 on top of the length), the check letter or key of the
identity schemes (1 in 23 to 1 in 97). The same checks are what issuers use to catch typos, so a
real number always passes.

Built-in rules (`BUILTIN_RULES`, named in `[privacy] redact`):

- `card`: 13-19 digits in one number or in groups split by single spaces or dashes
  (`4111 1111 1111 1111`, `5500-0000-0000-0004`), Luhn-valid, not starting with 0; the
  longest valid run of whole groups, so a card next to other numbers is still found. Also
  spoken: ASR engines write what callers say as words ("four one one one ..."), so runs of
  digit words (`zero`/`oh`, `one`..`nine`, `double four`, `triple one`, separated by spaces,
  commas or dashes, mixed with digit groups) are read as digits and the whole span of words is
  replaced. A run of spoken digits counts only as a whole (a long run of single digits has many
  Luhn-valid windows); a leading "oh" is an interjection, not a zero. A number written after
  `+` is a phone number, not a card.
- `iban`: two letters, two check digits and the account, compact or with single spaces
  (`DE89 3704 0044 0532 0130 00`), any case; the country must be one with a registered IBAN
  length (`IBAN_LENGTHS`: SEPA and the other countries of the registry) and the number must
  have exactly that length and pass mod-97.
- `national_id`: US SSN `AAA-GG-SSSS` (dashes or spaces; area 000, 666 and 9xx, group 00 and
  serial 0000 are never issued); UK National Insurance number (`AB 12 34 56 C`; prefixes never
  issued rejected); Spanish DNI (8 digits + mod-23 letter) and NIE (X/Y/Z + 7 digits + letter);
  French NIR (15 characters, key = 97 - number mod 97, Corsica 2A/2B); Italian codice fiscale
  (16 characters, check character, omocodia substitutions accepted).
- `email`: an address `local@domain.tld`.
- `phone`: `+` followed by 8-15 digits (E.164, spaces, dots or dashes between groups) and
  national numbers of 10-11 digits (`020 7946 0958`, `(555) 123-4567`, `06 12 34 56 78`).
  Off by default: phone numbers have no check digit, so this rule also hits account numbers,
  order numbers and other 10-11 digit references the records need.

Rules work on the original text and their spans are merged, so one rule never sees another's
placeholder. Rules that need a digit (or an `@`) are skipped at the cost of one search on texts
without one; only the card rule also looks for digit words.

Not covered: numbers spelled out in other languages or as "forty-one eleven", e-mail addresses
spoken as "john at example dot com", identity numbers of other countries, and a codice fiscale
with all seven digits replaced by omocodia letters (it has no digit, so the rule is skipped).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.asr.grammars import DIGIT_WORDS
from app.call.events import CallEvent, StepResult, TurnCompleted, VariableSet

if TYPE_CHECKING:
    from app.config import PrivacyConfig

Span = tuple[int, int]
"""A `[start, end)` slice of the text to replace."""


@dataclass(frozen=True, slots=True)
class Rule:
    """A built-in redaction rule. `find` yields the spans of validated PII in a text;
    `trigger` is a cheap pattern found in any text the rule can match (None: always run), so
    the rule is skipped on most texts without running its validators."""

    name: str
    covers: str
    find: Callable[[str], Iterator[Span]]
    trigger: re.Pattern[str] | None


_DIGIT = re.compile(r"[0-9]")
_AT = re.compile(r"@")


def _spans(
    pattern: re.Pattern[str], valid: Callable[[re.Match[str]], bool]
) -> Callable[[str], Iterator[Span]]:
    """A `Rule.find` yielding the matches of `pattern` that `valid` accepts."""

    def find(text: str) -> Iterator[Span]:
        for match in pattern.finditer(text):
            if valid(match):
                yield match.span()

    return find


# -- card --------------------------------------------------------------------------------------

# The digit words ASR transcripts use (app.asr.grammars), less the bare letter "o": as a word
# of running text it is far more often not a zero.
_DIGIT_WORDS = {word: digit for word, digit in DIGIT_WORDS.items() if len(word) > 1}
_WORDS = "|".join(_DIGIT_WORDS)
_REPEATS = {"double": 2, "triple": 3}
# A token is one group of digits, a digit word, or "double/triple <digit>".
_CARD_TOKEN = rf"(?:(?:double|triple)\s+(?:(?:{_WORDS})\b|[0-9]\b)|(?:{_WORDS})\b|[0-9]++(?!\w))"
_CARD_SEP = r"(?:\s*[,-]\s*|\s+)"
_CARD_RUN = re.compile(
    rf"(?:(?P<plus>\+)|(?<![\w+])){_CARD_TOKEN}(?:{_CARD_SEP}{_CARD_TOKEN})*", re.IGNORECASE
)
_CARD_TOKENS = re.compile(_CARD_TOKEN, re.IGNORECASE)
_CARD_TRIGGER = re.compile(rf"[0-9]|\b(?:{_WORDS})\b", re.IGNORECASE)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _token_digits(token: str) -> str:
    words = token.lower().split()
    if len(words) == 2:  # "double four", "triple 1"
        return _DIGIT_WORDS.get(words[1], words[1]) * _REPEATS[words[0]]
    return _DIGIT_WORDS.get(words[0], words[0])


@dataclass(slots=True)
class _Unit:
    """A group of digits, or a whole run of spoken digits, within a run of numbers."""

    start: int
    end: int
    digits: str
    spoken: bool


def _find_cards(text: str) -> Iterator[Span]:
    for run in _CARD_RUN.finditer(text):
        if run["plus"] or run.end() - run.start() < 13:  # a phone number, or too short
            continue
        units: list[_Unit] = []
        for token in _CARD_TOKENS.finditer(text, run.start(), run.end()):
            word = token.group()
            spoken = not word[0].isdigit()
            if spoken and not units and word.lower() == "oh":  # "Oh, four one one ..."
                continue
            if units and spoken and units[-1].spoken:  # spoken digits form one unit
                units[-1].end = token.end()
                units[-1].digits += _token_digits(word)
                continue
            # Groups of digits are one number only when split by a single space or dash:
            # "10, 30" or "2024 -  15" are separate numbers, "four, one" is one spoken number.
            if (
                units
                and not spoken
                and not units[-1].spoken
                and text[units[-1].end : token.start()] not in (" ", "-")
            ):
                yield from _card_spans(units)
                units = []
            units.append(_Unit(token.start(), token.end(), _token_digits(word), spoken))
        yield from _card_spans(units)


def _card_spans(units: list[_Unit]) -> Iterator[Span]:
    """The longest Luhn-valid runs of whole units, left to right: a card number written next
    to other numbers is found, but a spoken number is a card only as a whole, since a long
    run of single digits has many Luhn-valid windows."""
    i = 0
    while i < len(units):
        if units[i].digits[0] == "0":  # no card number starts with 0
            i += 1
            continue
        # Luhn sums of the window kept as it grows: plain and doubled digit values at even and
        # odd positions from the window's start; which ones are doubled depends on its length.
        plain, doubled = [0, 0], [0, 0]
        length = 0
        best = -1
        for j in range(i, len(units)):
            digits = units[j].digits
            if length + len(digits) > 19:
                break
            for char in digits:
                value = ord(char) - 48
                plain[length % 2] += value
                doubled[length % 2] += _LUHN_DOUBLED[value]
                length += 1
            odd = (length - 1) % 2  # parity of the last digit, which is not doubled
            if length >= 13 and (plain[odd] + doubled[1 - odd]) % 10 == 0:
                best = j
        if best >= 0:
            yield units[i].start, units[best].end
            i = best + 1
        else:
            i += 1


# -- iban --------------------------------------------------------------------------------------

IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
"""The IBAN length of each country (ISO 13616 registry); other country codes are not IBANs."""

# The account part is captured in a lookahead so that a rejected candidate does not swallow
# an IBAN that starts inside it.
_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2}[0-9]{2})(?=((?: ?[A-Za-z0-9]){11,30}))")


def iban_valid(iban: str) -> bool:
    """ISO 7064 mod 97-10 check of a compact, upper-case IBAN (and its country's length)."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _find_ibans(text: str) -> Iterator[Span]:
    for match in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(match.group(1)[:2].upper())
        if length is None:
            continue
        # Take exactly the country's length; the number must end at a word boundary there.
        account, wanted, end = match.group(2), length - 4, match.start(2)
        for char in account:
            if wanted == 0:
                break
            end += 1
            wanted -= char != " "
        if wanted or (end < len(text) and text[end].isalnum()):
            continue
        compact = text[match.start() : end].replace(" ", "").upper()
        if iban_valid(compact):
            yield match.start(), end


# -- national_id -------------------------------------------------------------------------------

_SSN = re.compile(
    r"(?<![\w-])(?P<area>[0-9]{3})(?P<sep>[- ])(?P<group>[0-9]{2})(?P=sep)(?P<serial>[0-9]{4})"
    r"(?![\w-])"
)


def _ssn_valid(match: re.Match[str]) -> bool:
    area = match["area"]
    return (
        area not in ("000", "666")
        and area[0] != "9"
        and match["group"] != "00"
        and match["serial"] != "0000"
    )


_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?P<prefix>[A-Z]{2}) ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?![A-Za-z0-9])",
    re.IGNORECASE,
)
_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})


def _nino_valid(match: re.Match[str]) -> bool:
    prefix = match["prefix"].upper()
    return (
        prefix[0] not in "DFIQUV"
        and prefix[1] not in "DFIQUVO"
        and prefix not in _NINO_BAD_PREFIXES
    )


_DNI = re.compile(
    r"(?<![A-Za-z0-9])(?:(?P<nie>[XYZ])[ -]?(?P<nie_number>[0-9]{7})|(?P<number>[0-9]{8}))"
    r"[ -]?(?P<letter>[A-Z])(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def _dni_valid(match: re.Match[str]) -> bool:
    """Spanish DNI (8 digits) or NIE (X/Y/Z as 0/1/2 + 7 digits): letter = table[n mod 23]."""
    if match["nie"]:
        number = int(str("XYZ".index(match["nie"].upper())) + match["nie_number"])
    else:
        number = int(match["number"])
    return match["letter"].upper() == _DNI_LETTERS[number % 23]


_NIR = re.compile(r"(?<![A-Za-z0-9])[1-478](?: ?[0-9AB]){14}(?![A-Za-z0-9])", re.IGNORECASE)


def _nir_valid(match: re.Match[str]) -> bool:
    """French NIR: sex, year, month, department (2A/2B for Corsica), commune, order, then the
    key 97 - (13-digit number mod 97), with 2A/2B counted as 19/18."""
    nir = match.group().replace(" ", "").upper()
    department = {"2A": "19", "2B": "18"}.get(nir[5:7], nir[5:7])
    number = nir[:5] + department + nir[7:13]
    if not (number + nir[13:]).isdigit():
        return False
    month = int(nir[3:5])
    if not (1 <= month <= 12 or 20 <= month <= 42 or month >= 50):  # INSEE's special months
        return False
    return int(nir[13:]) == 97 - int(number) % 97


_CF_DIGIT = "[0-9LMNP-V]"  # omocodia: a digit may be replaced by L..V to separate homonyms
_CF = re.compile(
    rf"(?<![A-Za-z0-9])[A-Z]{{6}}{_CF_DIGIT}{{2}}[ABCDEHLMPRST]{_CF_DIGIT}{{2}}[A-Z]"
    rf"{_CF_DIGIT}{{3}}[A-Z](?![A-Za-z0-9])",
    re.IGNORECASE,
)
_CF_OMOCODES = str.maketrans("LMNPQRSTUV", "0123456789")
_CF_ODD = dict(
    zip(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        [1, 0, 5, 7, 9, 13, 15, 17, 19, 21] * 2 + [2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10,
                                                    22, 25, 24, 23],
        strict=True,
    )
)  # fmt: skip


def _cf_valid(match: re.Match[str]) -> bool:
    """Italian codice fiscale: day of birth 1-31 (41-71 for women), then the check character
    (odd positions through the table, even ones by value, sum mod 26)."""
    code = match.group().upper()
    day = int(code[9:11].translate(_CF_OMOCODES))
    if not (1 <= day <= 31 or 41 <= day <= 71):
        return False
    total = 0
    for position, char in enumerate(code[:15]):
        if position % 2 == 0:  # 1st, 3rd, ... character
            total += _CF_ODD[char]
        else:
            total += int(char) if char.isdigit() else ord(char) - 65
    return code[15] == chr(65 + total % 26)


_NATIONAL_IDS = (
    _spans(_SSN, _ssn_valid),
    _spans(_NINO, _nino_valid),
    _spans(_DNI, _dni_valid),
    _spans(_NIR, _nir_valid),
    _spans(_CF, _cf_valid),
)


def _find_national_ids(text: str) -> Iterator[Span]:
    for find in _NATIONAL_IDS:
        yield from find(text)


# -- email, phone ------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]++@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}(?![\w-])"
)

_PHONE = re.compile(
    r"(?<![\w+])(?:(?P<plus>\+ ?)|\([0-9]{1,5}\) ?)?[0-9]++(?:[ .-][0-9]++)*+(?!\w)"
)


def _phone_valid(match: re.Match[str]) -> bool:
    digits = sum(char.isdigit() for char in match.group())
    return 8 <= digits <= 15 if match["plus"] else 10 <= digits <= 11


BUILTIN_RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("card", "payment card numbers, Luhn-checked, also as digit words", _find_cards,
             _CARD_TRIGGER),
        Rule("iban", "IBANs, mod-97 and country length checked", _find_ibans, _DIGIT),
        Rule("national_id", "SSN, UK NINO, Spanish DNI/NIE, French NIR, Italian codice fiscale",
             _find_national_ids, _DIGIT),
        Rule("email", "e-mail addresses", _spans(_EMAIL, lambda match: True), _AT),
        Rule("phone", "E.164 and 10-11 digit national numbers (also hits account numbers)",
             _spans(_PHONE, _phone_valid), _DIGIT),
    )
}  # fmt: skip
"""The rules `[privacy] redact` may name. Where spans overlap they are replaced as one, labelled
by the earliest (then longest) span, then by this order; custom patterns come last."""

DEFAULT_RULES: tuple[str, ...] = ("card", "iban", "national_id")
"""The rules on when none are configured (the same as `PrivacyConfig.redact`'s default)."""

_TEXT_FIELDS: dict[type, tuple[str, ...]] = {
    TurnCompleted: ("prompt", "transcript", "fallbacks"),
    VariableSet: ("value",),
    StepResult: ("detail",),
}
"""The free-text fields of each event. `CallStarted`'s URIs and dialled number are the CDR's
caller and callee, which operators need, so they are left as they are."""


class Redactor:
    """Replaces PII in texts and call events. Immutable and thread-safe: one per process,
    used by the records' writer thread."""

    def __init__(self, rules: Iterable[str] = DEFAULT_RULES, patterns: Iterable[str] = ()) -> None:
        names = tuple(dict.fromkeys(rules))
        unknown = [name for name in names if name not in BUILTIN_RULES]
        if unknown:
            raise ValueError(
                f"unknown redaction rule {unknown[0]!r} (known: {', '.join(sorted(BUILTIN_RULES))})"
            )
        self.rules: tuple[str, ...] = tuple(name for name in BUILTIN_RULES if name in names)
        self.patterns: tuple[str, ...] = tuple(patterns)
        self._rules = tuple(BUILTIN_RULES[name] for name in self.rules)
        compiled = []
        for pattern in self.patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        self._patterns = tuple(compiled)

    @classmethod
    def from_config(cls, privacy: PrivacyConfig) -> Redactor:
        """The redactor `[privacy]` asks for (its values are validated by the config loader)."""
        return cls(privacy.redact, privacy.patterns)

    def redact(self, text: str) -> str:
        """`text` with each match replaced by `[redacted:<rule>]` (custom patterns:
        `[redacted]`); overlapping matches are replaced as one."""
        if not text or not (self._rules or self._patterns):
            return text
        found: list[tuple[int, int, int, str]] = []  # start, -end, priority, placeholder
        triggered: dict[re.Pattern[str], bool] = {}
        for priority, rule in enumerate(self._rules):
            if rule.trigger is not None:
                hit = triggered.get(rule.trigger)
                if hit is None:
                    hit = triggered[rule.trigger] = rule.trigger.search(text) is not None
                if not hit:
                    continue
            placeholder = f"[redacted:{rule.name}]"
            found.extend((start, -end, priority, placeholder) for start, end in rule.find(text))
        priority = len(self._rules)
        for pattern in self._patterns:
            for match in pattern.finditer(text):
                if match.end() > match.start():  # a pattern that can match nothing
                    found.append((match.start(), -match.end(), priority, "[redacted]"))
        if not found:
            return text
        found.sort()
        parts: list[str] = []
        current_end = 0  # end of the span being replaced
        for start, negative_end, _, placeholder in found:
            end = -negative_end
            if parts and start < current_end:  # overlaps the span being replaced: widen it
                current_end = max(current_end, end)
                continue
            parts.append(text[current_end:start])
            parts.append(placeholder)
            current_end = end
        parts.append(text[current_end:])
        return "".join(parts)

    def redact_event(self, event: CallEvent) -> CallEvent:
        """A copy of `event` with its free-text fields redacted; `event` itself when nothing
        was redacted (events are frozen, so sharing them is safe)."""
        fields = _TEXT_FIELDS.get(type(event))
        if fields is None:
            return event
        changes: dict[str, str | tuple[str, ...]] = {}
        for name in fields:
            value = getattr(event, name)
            if isinstance(value, str):
                redacted: str | tuple[str, ...] = self.redact(value)
            else:
                redacted = tuple(self.redact(item) for item in value)
            if redacted != value:
                changes[name] = redacted
        return dataclasses.replace(event, **changes) if changes else event
