"""Slot interpretation: what a caller's answer to an `ask` step means, as a normalised string.

Pure functions, no I/O and no clock (a date is read relative to the `today` it is given). Each
takes either `text`, the recogniser's words (any case; fillers such as "uh" or "my number is"
are skipped), or `dtmf`, the keypad digits with the terminator already stripped, and returns
the value as a str, or None when the answer does not fit, so the dialogue asks again. Giving
both is a programming error (ValueError); giving neither is no input (None).

Conventions:
- number: decimal without leading zeros, "42".
- date: ISO "2026-11-23". Keypad dates are US order, MMDD or MMDDYYYY.
- time: 24-hour "14:30". Keypad times are HHMM, 24-hour. A spoken hour of 1-11 without
  am/pm is read for business hours: 1-6 as pm, 7-11 as am; 12 is noon. An hour said as
  24-hour ("fourteen thirty", "oh nine hundred", anything with "hundred") is taken as said.
- yes_no: "yes" or "no". Keypad 1 is yes, 2 is no.

The words understood are the ones the built-in grammars of `app.asr.grammars` allow (plus
numerals, and a few spellings those grammars leave out, such as "a m"), so that what a grammar
lets through is also understood here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from app.asr.grammars import (
    DIGIT_WORDS,
    MONTHS,
    NO_WORDS,
    ORDINAL_WORDS,
    TEEN_WORDS,
    TENS_WORDS,
    UNIT_WORDS,
    WEEKDAYS,
    YES_WORDS,
)
from app.asr.numbers import cardinal, spoken_digits

_TOKEN = re.compile(r"[0-9a-z']+")
_DTMF_DIGITS = re.compile(r"[0-9]+")
_NUMERAL_ORDINAL = re.compile(r"([0-9]+)(?:st|nd|rd|th)")


# --- words -------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """Lower-case words and numerals: "It's 2:30 P.M." -> ["it's", "2", "30", "p", "m"]."""
    text = text.casefold().replace("\u2019", "'")
    return [t.strip("'") for t in _TOKEN.findall(text) if t.strip("'")]


def _normalise(text: str) -> str:
    """For comparing phrases: casefold, apostrophes dropped, other punctuation a space."""
    text = text.casefold().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _one_input(text: str | None, dtmf: str | None) -> None:
    if text is not None and dtmf is not None:
        raise ValueError("give the answer as text or as dtmf, not both")


def _keypad(dtmf: str) -> str | None:
    """The keypad digits if they are only 0-9 (a '*' or '#' left in means another answer)."""
    return dtmf if _DTMF_DIGITS.fullmatch(dtmf) else None


# --- numbers -----------------------------------------------------------------------------

_NUMBER_WORDS = frozenset(
    (*DIGIT_WORDS, *TEEN_WORDS, *TENS_WORDS, "hundred", "thousand", "a", "and")
)


def _digit_string(words: Sequence[str]) -> str | None:
    """Digit by digit, words or numerals: "four oh two" -> "402", "4 2" -> "42"."""
    if words and all(w in DIGIT_WORDS for w in words):
        return "".join(DIGIT_WORDS[w] for w in words)
    if words and all(w.isdigit() for w in words):
        return "".join(words)
    return None


def _number_words(text: str) -> list[str]:
    """The words of `text` that can be part of a number, fillers dropped ("a"/"and" kept only
    where a number uses them, and a leading "oh" of surprise dropped when more follows)."""
    words = [t for t in _tokens(text) if t in _NUMBER_WORDS or t.isdigit()]
    kept = []
    for i, word in enumerate(words):
        after = words[i + 1] if i + 1 < len(words) else None
        before = kept[-1] if kept else None
        if word == "a" and after not in ("hundred", "thousand"):
            continue
        if word == "and" and (before not in ("hundred", "thousand") or after is None):
            continue
        kept.append(word)
    if len(kept) > 1 and kept[0] == "oh" and cardinal(kept[1:]) is not None:
        kept = kept[1:]
    return kept


def _spoken_number(words: Sequence[str]) -> int | None:
    value = cardinal(words)
    if value is None and len(words) > 1:
        spelled = _digit_string(words)
        value = int(spelled) if spelled is not None else None
    return value


# --- the slot types ----------------------------------------------------------------------


def digits(
    text: str | None = None, dtmf: str | None = None, min_len: int = 1, max_len: int = 64
) -> str | None:
    """A digit string, leading zeros kept: "oh one two three" or keypad 0123 -> "0123".

    Spoken forms are read by `app.asr.numbers.spoken_digits`: "double five" is 55, "twenty
    three" 23, "599-341" 599341, "four one to seven" 4127. None when no digit was said or the
    length is outside [min_len, max_len].
    """
    _one_input(text, dtmf)
    if dtmf is not None:
        value = _keypad(dtmf)
    elif text is not None:
        value = spoken_digits(text)
    else:
        return None
    if not value or not value.isdigit():
        return None
    return value if min_len <= len(value) <= max_len else None


def yes_no(text: str | None = None, dtmf: str | None = None) -> str | None:
    """Yes or no, as "yes"/"no": "yeah", "that's right", "nope"...; keypad 1 = yes, 2 = no.

    "not" before a yes word makes it a no ("that's not right"). Hearing both a yes and a no, or
    neither, gives None.
    """
    _one_input(text, dtmf)
    if dtmf is not None:
        return {"1": "yes", "2": "no"}.get(dtmf)
    if text is None:
        return None
    words = _tokens(text)
    yes = no = False
    for i, word in enumerate(words):
        negated = i > 0 and words[i - 1] == "not"
        if word in YES_WORDS:
            no, yes = (True, yes) if negated else (no, True)
        elif word in NO_WORDS:
            no = True
    if yes == no:
        return None
    return "yes" if yes else "no"


def number(
    text: str | None = None,
    dtmf: str | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> str | None:
    """A whole number, "42": said as a cardinal ("forty two", "a hundred and five", "two
    thousand twenty six", "twenty five hundred"), digit by digit ("four two"), or as numerals;
    keypad digits are the number. None outside [minimum, maximum] (inclusive, when given).
    """
    _one_input(text, dtmf)
    if dtmf is not None:
        keyed = _keypad(dtmf)
        value = int(keyed) if keyed is not None else None
    elif text is not None:
        value = _spoken_number(_number_words(text))
    else:
        return None
    if value is None:
        return None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        return None
    return str(value)


# --- dates -------------------------------------------------------------------------------

_DATE_WORDS = frozenset(
    {*_NUMBER_WORDS, *ORDINAL_WORDS, *MONTHS, *WEEKDAYS}
    | {"today", "tomorrow", "day", "after", "this", "next", "coming"}
) - {"a"}
_RELATIVE_DAYS = {("today",): 0, ("tomorrow",): 1, ("day", "after", "tomorrow"): 2}
_WEEK_MODIFIERS = ("this", "next", "coming")


def _day(words: Sequence[str]) -> tuple[int, bool] | None:
    """A day of the month, 1-31, and whether it was an ordinal ("twenty third", "23rd")."""
    if len(words) == 1:
        word = words[0]
        if word in ORDINAL_WORDS:
            return ORDINAL_WORDS[word], True
        match = _NUMERAL_ORDINAL.fullmatch(word)
        if match:
            value = int(match.group(1))
            return (value, True) if 1 <= value <= 31 else None
    if len(words) == 2 and words[0] in ("twenty", "thirty") and words[1] in ORDINAL_WORDS:
        value = TENS_WORDS[words[0]] + ORDINAL_WORDS[words[1]]
        return (value, True) if ORDINAL_WORDS[words[1]] < 10 and value <= 31 else None
    value = cardinal(words)
    return (value, False) if value is not None and 1 <= value <= 31 else None


def _year(words: Sequence[str]) -> int | None:
    """1000-9999: "twenty twenty seven", "nineteen oh five", "two thousand and six", "2027"."""
    value = cardinal(words)
    if value is None:  # said in pairs: "twenty" + "twenty seven"
        for split in range(1, len(words)):
            high, low = words[:split], words[split:]
            century = cardinal(high)
            if low[0] == "oh" and len(low) == 2 and low[1] in UNIT_WORDS:
                rest = UNIT_WORDS[low[1]]
            else:
                rest = cardinal(low)
                rest = rest if rest is not None and rest >= 10 else None
            if century is not None and 10 <= century <= 99 and rest is not None:
                value = century * 100 + rest
                break
    return value if value is not None and 1000 <= value <= 9999 else None


def _next_on_or_after(today: dt.date, month: int, day: int) -> dt.date | None:
    """The first month/day on or after today (Feb 29: the next leap year's)."""
    for year in range(today.year, today.year + 9):
        try:
            candidate = dt.date(year, month, day)
        except ValueError:
            continue
        if candidate >= today:
            return candidate
    return None


def _next_day_of_month(today: dt.date, day: int) -> dt.date | None:
    """The first date on or after today that falls on `day` of its month."""
    year, month = today.year, today.month
    for _ in range(13):
        try:
            candidate = dt.date(year, month, day)
        except ValueError:
            candidate = None
        if candidate is not None and candidate >= today:
            return candidate
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return None


def _calendar_date(words: list[str], today: dt.date) -> dt.date | None:
    """<month> <day> [<year>], <day> <month> [<year>], or an ordinal day alone."""
    months = [i for i, w in enumerate(words) if w in MONTHS]
    if len(months) > 1:
        return None
    if not months:  # "the twenty third": an ordinal only, a bare "twenty three" is no date
        day = _day(words)
        return _next_day_of_month(today, day[0]) if day is not None and day[1] else None
    at = months[0]
    month = MONTHS.index(words[at]) + 1
    before, after = words[:at], words[at + 1 :]
    if before:  # "twenty third of november [twenty twenty six]"
        day = _day(before)
        year = _year(after) if after else None
        if day is None or (after and year is None):
            return None
        found = [(day[0], year)]
    else:  # "november twenty third [twenty twenty six]": every way to split day from year
        found = []
        for split in range(1, len(after) + 1):
            day = _day(after[:split])
            year = _year(after[split:]) if split < len(after) else None
            if day is not None and (split == len(after) or year is not None):
                found.append((day[0], year))
    if len(found) != 1:
        return None
    day_of_month, year = found[0]
    if year is None:
        return _next_on_or_after(today, month, day_of_month)
    try:
        return dt.date(year, month, day_of_month)
    except ValueError:
        return None


def date(text: str | None = None, dtmf: str | None = None, *, today: dt.date) -> str | None:
    """A calendar date as ISO "2026-11-23", read relative to `today`.

    Speech: "today", "tomorrow", "the day after tomorrow"; a weekday ("friday", "this friday",
    "next friday", "coming friday" all mean the next Friday strictly after today: today itself
    is only "today"); "november twenty third", "november twenty three", "the twenty third of
    november", "twenty third november", each with an optional year ("twenty twenty seven",
    "two thousand twenty seven"); "the twenty third" alone (the next 23rd on or after today:
    this month unless past). Without a year, a month and day mean the next such date on or
    after today; with one, the date as said (past dates too, e.g. a date of birth). A weekday
    said with a full date must agree with it. Keypad: MMDD (next such date, as above) or
    MMDDYYYY. Impossible dates ("february thirtieth") give None.
    """
    _one_input(text, dtmf)
    if dtmf is not None:
        found = _keypad_date(dtmf, today)
    elif text is not None:
        found = _spoken_date(text, today)
    else:
        return None
    return found.isoformat() if found is not None else None


def _keypad_date(dtmf: str, today: dt.date) -> dt.date | None:
    if _keypad(dtmf) is None or len(dtmf) not in (4, 8):
        return None
    month, day = int(dtmf[:2]), int(dtmf[2:4])
    if not 1 <= month <= 12:
        return None
    if len(dtmf) == 4:
        return _next_on_or_after(today, month, day)
    try:
        return dt.date(int(dtmf[4:]), month, day)
    except ValueError:
        return None


def _spoken_date(text: str, today: dt.date) -> dt.date | None:
    words = [
        t for t in _tokens(text) if t in _DATE_WORDS or t.isdigit() or _NUMERAL_ORDINAL.fullmatch(t)
    ]
    if tuple(words) in _RELATIVE_DAYS:
        return today + dt.timedelta(days=_RELATIVE_DAYS[tuple(words)])
    weekdays = [w for w in words if w in WEEKDAYS]
    if len(weekdays) > 1:
        return None
    rest = [w for w in words if w not in WEEKDAYS and w not in _WEEK_MODIFIERS]
    if weekdays and not rest:
        ahead = (WEEKDAYS.index(weekdays[0]) - today.weekday()) % 7 or 7
        return today + dt.timedelta(days=ahead)
    found = _calendar_date(rest, today) if rest else None
    if found is not None and weekdays and found.weekday() != WEEKDAYS.index(weekdays[0]):
        return None  # "monday november twenty fourth" when the 24th is a Tuesday: ask again
    return found


# --- times -------------------------------------------------------------------------------

_MERIDIEM = {"am": "am", "pm": "pm", "morning": "am", "afternoon": "pm", "evening": "pm"}
_PAST = ("past", "after")
_TO = ("to", "before", "till", "til", "of")
_TIME_WORDS = frozenset(
    {*_NUMBER_WORDS, *_MERIDIEM, *_PAST, *_TO}
    | {"o'clock", "oclock", "noon", "midday", "midnight", "quarter", "half", "hours"}
    | {"minute", "minutes"}
) - {"a", "and"}
_NOON, _MIDNIGHT = ("noon", "midday"), ("midnight",)


def time_of_day(text: str | None = None, dtmf: str | None = None) -> str | None:
    """A time as 24-hour "HH:MM".

    Speech: "<hour> [<minutes> | o'clock] [am | pm | in the morning | in the afternoon | in the
    evening]" ("two thirty pm", "nine o'clock", "two oh five"); 24-hour forms ("fourteen
    thirty", "fourteen hundred [hours]", "oh nine hundred"); "noon", "midday", "midnight";
    "quarter past three", "half past ten", "quarter to four", "ten to six", "twenty five
    minutes past two" (past/after, to/before/of). Without am/pm an hour of 1-6 is pm and 7-11
    am (business hours), 12 is noon; 24-hour forms are taken as said. Keypad: HHMM, 24-hour.
    """
    _one_input(text, dtmf)
    if dtmf is not None:
        if _keypad(dtmf) is None or len(dtmf) != 4:
            return None
        return _hhmm(int(dtmf[:2]), int(dtmf[2:]))
    if text is None:
        return None
    return _spoken_time(_time_words(text))


def _time_words(text: str) -> list[str]:
    """Time words of `text`, "a m"/"p m"/"in the morning" folded into "am"/"pm"."""
    tokens = _tokens(text)
    words: list[str] = []
    for i, token in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if token in ("a", "p") and after == "m":
            words.append(token + "m")
        elif token == "m" and i > 0 and tokens[i - 1] in ("a", "p"):
            continue
        elif token in _TIME_WORDS or token.isdigit():
            words.append(_MERIDIEM.get(token, "o'clock" if token == "oclock" else token))
    while words and words[0] in (*_PAST, *_TO):  # "I'd like to come at two": "to" is no time
        words.pop(0)
    return words


def _hhmm(hour: int, minute: int) -> str | None:
    return f"{hour:02d}:{minute:02d}" if 0 <= hour <= 23 and 0 <= minute <= 59 else None


def _spoken_time(words: list[str]) -> str | None:
    meridiem = None
    if words and words[-1] in ("am", "pm"):
        meridiem = words.pop()
    if not words or any(w in ("am", "pm") for w in words):
        return None
    if len(words) == 1 and words[0].isdigit() and len(words[0]) in (3, 4):
        words = [words[0][:-2], words[0][-2:]]  # "1430", "930": hours and minutes
    if words[-1] in (*_NOON, *_MIDNIGHT) and (len(words) == 1 or words[:-1] == ["twelve"]):
        return None if meridiem else ("12:00" if words[-1] in _NOON else "00:00")
    relation = [i for i, w in enumerate(words) if w in (*_PAST, *_TO)]
    if relation:
        return _relative_time(words, relation, meridiem)
    readings = []  # every way to split the words into an hour and minutes
    for split in range(1, len(words) + 1):
        hour, minute = _hour(words[:split]), _minutes(words[split:])
        if hour is not None and minute is not None:
            readings.append((hour, minute))
    if len(readings) != 1:
        return None
    (value, as_24h), (minute, military) = readings[0]
    hour = _to_24h(value, meridiem, as_24h or military)
    return _hhmm(hour, minute) if hour is not None else None


def _hour(words: Sequence[str]) -> tuple[int, bool] | None:
    """An hour 0-23 and whether it was said as 24-hour ("oh nine", "zero", "fourteen")."""
    if len(words) == 2 and words[0] in ("oh", "zero") and words[1] in UNIT_WORDS:
        return UNIT_WORDS[words[1]], True
    if len(words) == 1 and words[0].isdigit():
        value = int(words[0])
        return (value, words[0].startswith("0") or value > 12) if value <= 23 else None
    value = cardinal(words)
    if value is None or value > 23:
        return None
    return value, value == 0 or value > 12


def _minutes(words: Sequence[str]) -> tuple[int, bool] | None:
    """Minutes after the hour and whether the form was 24-hour ("hundred [hours]")."""
    words = list(words)
    if words and words[-1] == "hours":
        words.pop()
        if not words:
            return None
    if not words or words == ["o'clock"]:
        return 0, False
    if words == ["hundred"]:
        return 0, True
    if len(words) == 2 and words[0] in ("oh", "zero") and words[1] in UNIT_WORDS:
        return UNIT_WORDS[words[1]], False
    if len(words) == 1 and words[0].isdigit():
        return (int(words[0]), False) if len(words[0]) == 2 else None
    value = cardinal(words)
    return (value, False) if value is not None and 10 <= value <= 59 else None


def _to_24h(hour: int, meridiem: str | None, as_24h: bool) -> int | None:
    if meridiem is not None:
        if as_24h or not 1 <= hour <= 12:
            return None
        return hour % 12 + (12 if meridiem == "pm" else 0)
    if as_24h or hour == 12:
        return hour
    return hour + 12 if 1 <= hour <= 6 else hour


def _relative_time(words: list[str], relation: list[int], meridiem: str | None) -> str | None:
    """Minutes past or to an hour: "quarter past three", "ten to midnight"."""
    if len(relation) != 1:
        return None
    at = relation[0]
    amount, target = words[:at], words[at + 1 :]
    if amount and amount[-1] in ("minute", "minutes"):
        amount = amount[:-1]
    if amount == ["quarter"]:
        minutes = 15
    elif amount == ["half"] and words[at] in _PAST:
        minutes = 30
    else:
        minutes = cardinal(amount) if amount else None
        if minutes is None or not 1 <= minutes <= 59:
            return None
    if target in ([w] for w in (*_NOON, *_MIDNIGHT)):
        if meridiem is not None:
            return None
        base = 12 * 60 if target[0] in _NOON else 0
    else:
        hour = cardinal(target) if len(target) <= 2 else None
        if hour is None or not 1 <= hour <= 12:
            return None
        converted = _to_24h(hour, meridiem, as_24h=False)
        if converted is None:
            return None
        base = converted * 60
    total = (base + (minutes if words[at] in _PAST else -minutes)) % (24 * 60)
    return _hhmm(total // 60, total % 60)


# --- choices, phrases, free text ---------------------------------------------------------


def choice_phrases(choices: Mapping[str, Sequence[str]]) -> list[str]:
    """Every way of saying every choice, values first: the phrases of its grammar."""
    return list(dict.fromkeys([*choices, *(s for syns in choices.values() for s in syns)]))


def choice(
    text: str | None = None,
    dtmf: str | None = None,
    *,
    choices: Mapping[str, Sequence[str]],
    keys: Mapping[str, str] | None = None,
) -> str | None:
    """The value (a key of `choices`) the caller picked, by a synonym or by a keypad key.

    `choices` maps each value to its synonyms; the value counts as one too. Text and synonyms
    are compared normalised (casefold, punctuation dropped, spaces collapsed). Text equal to a
    synonym picks its choice; otherwise every synonym found in the text as whole words counts,
    except one found inside a longer one ("balance" inside "account balance"): one choice left
    is the answer, two or more are ambiguous (None). `keys` maps keypad keys to values
    ({"1": "balance"}); a key not in it gives None.
    """
    _one_input(text, dtmf)
    if dtmf is not None:
        return (keys or {}).get(dtmf)
    if text is None:
        return None
    said = _normalise(text)
    if not said:
        return None
    synonyms: dict[str, set[str]] = {}
    for value, names in choices.items():
        for name in (value, *names):
            key = _normalise(name)
            if key:
                synonyms.setdefault(key, set()).add(value)
    if said in synonyms:
        exact = synonyms[said]
        return next(iter(exact)) if len(exact) == 1 else None
    words = said.split()
    found: list[tuple[int, int, set[str]]] = []  # (start, end, values) of each occurrence
    for synonym, values in synonyms.items():
        parts = synonym.split()
        for start in range(len(words) - len(parts) + 1):
            if words[start : start + len(parts)] == parts:
                found.append((start, start + len(parts), values))
    picked: set[str] = set()
    for start, end, values in found:
        inside_longer = any(
            s <= start and end <= e and (e - s) > (end - start) for s, e, _ in found
        )
        if not inside_longer:
            picked |= values
    return next(iter(picked)) if len(picked) == 1 else None


def phrase(text: str | None, phrases: Iterable[str]) -> str | None:
    """The phrase as written in `phrases` that `text` says (compared normalised), or None."""
    if text is None:
        return None
    said = _normalise(text)
    if not said:
        return None
    return next((p for p in phrases if _normalise(p) == said), None)


def free_text(text: str | None = None, dtmf: str | None = None) -> str | None:
    """Anything said (spaces collapsed) or keyed; None when empty."""
    _one_input(text, dtmf)
    value = " ".join((text if text is not None else dtmf or "").split())
    return value or None


# --- the registry ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotType:
    """What a dialplan's `type:` name means.

    `grammar`: the built-in grammar (`app.asr.grammars.BUILTIN_GRAMMARS`) that constrains the
    recogniser for it; None when the step supplies one (choice) or there is none (text).
    `interpret`: the function above that reads an answer (see its own extra arguments).
    """

    name: str
    grammar: str | None
    interpret: Callable[..., str | None]
    summary: str


SLOT_TYPES: Mapping[str, SlotType] = MappingProxyType(
    {
        slot.name: slot
        for slot in (
            SlotType("digits", "digits", digits, "a digit string, leading zeros kept"),
            SlotType("yes_no", "yes_no", yes_no, '"yes" or "no"'),
            SlotType("number", "number", number, "a whole number"),
            SlotType("date", "date", date, "a date, ISO YYYY-MM-DD"),
            SlotType("time", "time", time_of_day, "a time of day, 24-hour HH:MM"),
            SlotType("choice", None, choice, "one of the step's choices"),
            SlotType("text", None, free_text, "whatever was said"),
        )
    }
)
