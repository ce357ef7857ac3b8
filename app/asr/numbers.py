"""Numbers as callers say them, and as recognisers write them down, read into digits.

One reader for every engine and every slot: a grammar engine writes "four one seven", Whisper
"417", "4-1-7", "four one to seven" or "double five three", a caller adds "my number is". What a
phone bot must get right, and how it is read here:

- numerals, whatever separates them: "599-341-511", "4,170", "(555) 12 34" -> all their digits;
- digit words, "oh" and "o" as zero when next to another digit ("four oh two") or when they are
  the whole answer, while an "oh" of surprise before other words ("Oh, it's ...") is not a
  number;
- "double" and "triple" repeat the digit after them ("double five" -> 55, "triple oh" -> 000);
- homophones a recogniser writes for a digit ("to"/"too" 2, "for"/"fore" 4, "won" 1, "ate" 8,
  "a" 8) only where they lead into a number or close one at the end of the text ("you said
  for 0719" -> 40719), so "I want to pay" and "four for my account" keep their words;
- cardinals expand to their digits ("twenty three" -> 23, "nineteen eighty four" -> 1984, "a
  hundred and five" -> 105), read greedily left to right as the longest cardinal;
- any other word is skipped (fillers, lead-ins).

`cardinal` reads one whole number of words (the slots' `number`, `date` and `time` use it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from app.asr.grammars import DIGIT_WORDS, TEEN_WORDS, TENS_WORDS, UNIT_WORDS

ZERO_WORDS = frozenset(("oh", "o"))
REPEATS = {"double": 2, "triple": 3}
HOMOPHONES = {"to": "2", "too": "2", "for": "4", "fore": "4", "won": "1", "ate": "8", "a": "8"}
"""Words a recogniser writes for a spoken digit; digits only inside a run of numbers."""
MULTIPLIERS = frozenset(("hundred", "thousand"))
_CARDINAL_WORDS = frozenset((*UNIT_WORDS, *TEEN_WORDS, *TENS_WORDS, *MULTIPLIERS, "zero"))
_SPOKEN = {word: digit for word, digit in DIGIT_WORDS.items() if word not in ZERO_WORDS}
_TOKEN = re.compile(r"[0-9]+|[a-z]+(?:'[a-z]+)?")
_NUMBER_TOKEN = re.compile(r"[0-9]+")
_WORD_OF = {digit: word for word, digit in _SPOKEN.items()}


def tokens(text: str) -> list[str]:
    """Lower-case words and numeral runs; any other character separates them."""
    return _TOKEN.findall(text.casefold().replace("\u2019", "'"))


def spoken_digits(text: str) -> str:
    """The digits said in `text`, in order: "my number is double 5, 3-4 oh" -> "55340"."""
    return "".join(digits for _, _, digits in number_runs(tokens(text)))


def number_runs(words: Sequence[str]) -> list[tuple[int, int, str]]:
    """Each number in `words` (lower case, as `tokens` gives them): (start, end, its digits),
    `words[start:end]` being the words it was read from."""
    numeric = [_is_numeric(words, i) for i in range(len(words))]
    for _ in range(2):  # a homophone next to a homophone resolves once its neighbour has
        numeric = [
            numeric[i] or (words[i] in HOMOPHONES and _inside_run(numeric, i))
            for i in range(len(words))
        ]
    runs: list[tuple[int, int, str]] = []
    i = 0
    while i < len(words):
        if not numeric[i]:
            i += 1
            continue
        if words[i] in REPEATS:
            following = _digits_at(words, numeric, i + 1)
            if following is None:
                i += 1
                continue
            digits, end = following
            runs.append((i, end, digits[0] * REPEATS[words[i]] + digits[1:]))
            i = end
            continue
        found = _digits_at(words, numeric, i)
        if found is None:
            i += 1
            continue
        digits, end = found
        runs.append((i, end, digits))
        i = end
    return runs


def digit_words(digits: str) -> str:
    """ "4170" -> "four one seven zero": the form a digits grammar gives."""
    return " ".join(_WORD_OF[d] for d in digits)


def cardinal(words: Sequence[str]) -> int | None:
    """All of `words` as one cardinal, 0-999999, or None: "two thousand and twenty six"."""
    words = list(words)
    if not words:
        return None
    if words == ["zero"]:
        return 0
    if len(words) == 1 and words[0].isdigit():
        return int(words[0])
    if words[0] == "a" and words[1:2] == ["thousand"]:
        head: tuple[int, int] | None = (1, 1)
    else:
        head = _below1000(words, 0)
    if head is None:
        return None
    value, end = head
    if end < len(words) and words[end] == "thousand":
        rest, end = _and_rest(words, end + 1, _below1000)
        value = value * 1000 + rest
    elif end < len(words) and words[end] == "hundred":
        if not 10 <= value <= 99:  # "twenty five hundred"; "one hundred" is _below1000's
            return None
        rest, end = _and_rest(words, end + 1, _below100)
        value = value * 100 + rest
    return value if end == len(words) else None


def _is_numeric(words: Sequence[str], i: int) -> bool:
    """A numeral or number word, "oh" next to another number, "a"/"and" inside a cardinal, or
    "double"/"triple" before a digit."""
    word = words[i]
    if _NUMBER_TOKEN.fullmatch(word) or word in _CARDINAL_WORDS:
        return True
    before = words[i - 1] if i else None
    after = words[i + 1] if i + 1 < len(words) else None
    if word in ZERO_WORDS:  # a run of "oh"s counts where it touches a number ("oh oh seven")
        j = i
        while j < len(words) and words[j] in ZERO_WORDS:
            j += 1
        k = i
        while k > 0 and words[k - 1] in ZERO_WORDS:
            k -= 1
        before_run = words[k - 1] if k else None
        if k == 0 and j == len(words):
            return True  # the whole answer: a digits grammar's "oh"
        return (
            _plain_number(words[j] if j < len(words) else None)
            or _plain_number(before_run)
            or before_run in REPEATS
        )
    if word in REPEATS:
        return after is not None and (_plain_number(after) or after in ZERO_WORDS)
    if word == "a":
        return after in MULTIPLIERS
    if word == "and":
        return before in MULTIPLIERS and after is not None and _plain_number(after)
    return False


def _plain_number(word: str | None) -> bool:
    return word is not None and (bool(_NUMBER_TOKEN.fullmatch(word)) or word in _CARDINAL_WORDS)


def _inside_run(numeric: Sequence[bool], i: int) -> bool:
    """A number follows, or one comes before and the text ends here: "for 0719", "1 2 to",
    but not "to pay" or "4 1 7 for my account"."""
    before = numeric[i - 1] if i else None
    after = numeric[i + 1] if i + 1 < len(numeric) else None
    return after is True or (before is True and after is None)


def _digits_at(words: Sequence[str], numeric: Sequence[bool], i: int) -> tuple[str, int] | None:
    """The digits of the number starting at `i` and the index after it; None if none does."""
    if i >= len(words) or not numeric[i]:
        return None
    word = words[i]
    if _NUMBER_TOKEN.fullmatch(word):
        return word, i + 1
    if word in ZERO_WORDS:
        return "0", i + 1
    after = words[i + 1] if i + 1 < len(words) else None
    if word in HOMOPHONES and not (word == "a" and after in MULTIPLIERS):
        return HOMOPHONES[word], i + 1
    if word in REPEATS:
        return None
    # the longest run of number words from here that reads as one cardinal
    end = i
    while end < len(words) and numeric[end] and words[end] in (*_CARDINAL_WORDS, "a", "and"):
        end += 1
    for stop in range(end, i, -1):
        value = cardinal(words[i:stop])
        if value is not None:
            return str(value), stop
    return None


def _below100(words: Sequence[str], i: int) -> tuple[int, int] | None:
    """A number 1-99 said as words from `words[i]`: (value, index after it)."""
    if i >= len(words):
        return None
    word = words[i]
    if word in UNIT_WORDS:
        return UNIT_WORDS[word], i + 1
    if word in TEEN_WORDS:
        return TEEN_WORDS[word], i + 1
    if word in TENS_WORDS:
        if i + 1 < len(words) and words[i + 1] in UNIT_WORDS:
            return TENS_WORDS[word] + UNIT_WORDS[words[i + 1]], i + 2
        return TENS_WORDS[word], i + 1
    return None


def _and_rest(
    words: Sequence[str], i: int, part: Callable[[Sequence[str], int], tuple[int, int] | None]
) -> tuple[int, int]:
    """After "hundred"/"thousand": an optional "and" and a lower part, or nothing."""
    j = i + 1 if i < len(words) and words[i] == "and" else i
    rest = part(words, j)
    return rest if rest is not None else (0, i)


def _below1000(words: Sequence[str], i: int) -> tuple[int, int] | None:
    """1-999: "five", "forty two", "a hundred", "one hundred and five"."""
    if i + 1 < len(words) and words[i + 1] == "hundred":
        head = 1 if words[i] == "a" else UNIT_WORDS.get(words[i])
        if head is not None:
            rest, end = _and_rest(words, i + 2, _below100)
            return head * 100 + rest, end
    return _below100(words, i)
