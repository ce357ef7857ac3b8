"""Text normalisation for scoring: what a reference and a transcript must agree on.

Engines write the same words differently ("Twenty-three.", "23", "two three", "oh four"), and a
word error rate that counts those as errors measures formatting, not hearing. Both sides go
through `normalise` before scoring:

- case folded, apostrophes dropped ("it's" -> "its"), other punctuation a space;
- numbers to digits, one token per digit: numerals ("4711", "1,234"), digit words ("four seven
  one one"), cardinals ("twenty three", "one hundred and five", "nineteen eighty four" -> 1 9 8
  4); "oh" and "o" count as zero only next to another number word, so an exclamation stays a
  word.

Digits as single tokens make a misheard digit cost one error, as it does a caller. The digits of
a normalised text, joined, are its entity (`digit_string`): what a PIN or account step keeps.
"""

from __future__ import annotations

import re
import unicodedata

from app.asr.grammars import DIGIT_WORDS, TEEN_WORDS, TENS_WORDS
from app.dialog.slots import cardinal

_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NOT_WORD = re.compile(r"[^\w]+|_")
_ZERO_WORDS = frozenset(("oh", "o"))
_MULTIPLIERS = frozenset(("hundred", "thousand"))
_COMPOUND = frozenset((*TEEN_WORDS, *TENS_WORDS, *_MULTIPLIERS, "and", "a"))
_NUMBER_WORDS = frozenset((*DIGIT_WORDS, *TEEN_WORDS, *TENS_WORDS, *_MULTIPLIERS))


def words(text: str) -> list[str]:
    """Case-folded words: apostrophes dropped, any other punctuation splits."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("\u2019", "").replace("'", "")
    text = _THOUSANDS_SEPARATOR.sub("", text)
    return _NOT_WORD.sub(" ", text).split()


def normalise(text: str) -> str:
    """`text` in the scoring form: lower case, no punctuation, numbers as spaced digits."""
    tokens = words(text)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        consumed, digits = _number_at(tokens, i)
        if consumed:
            out.extend(digits)
            i += consumed
        else:
            out.append(tokens[i])
            i += 1
    return " ".join(out)


def digit_string(normalised: str) -> str:
    """The digits of an already normalised text, in order: its entity for exact-match scoring."""
    return "".join(t for t in normalised.split() if t.isdigit())


def _is_numberish(tokens: list[str], i: int) -> bool:
    if not 0 <= i < len(tokens):
        return False
    token = tokens[i]
    return token.isdigit() or (token in _NUMBER_WORDS and token not in _ZERO_WORDS)


def _number_at(tokens: list[str], i: int) -> tuple[int, list[str]]:
    """How many tokens from `i` form one number, and its digits; (0, []) if none does."""
    token = tokens[i]
    if token.isdigit():
        return 1, list(token)
    if token in _ZERO_WORDS:
        return (1, ["0"]) if _run_has_number(tokens, i) else (0, [])
    if token not in _NUMBER_WORDS and token != "a":
        return 0, []
    # the longest run from here that reads as one cardinal ("twenty three", "a hundred and five")
    end = i
    while end < len(tokens) and (tokens[end] in _NUMBER_WORDS or tokens[end] in ("and", "a")):
        end += 1
    for stop in range(end, i, -1):
        run = tokens[i:stop]
        if run[-1] in ("and", "a"):
            continue
        if len(run) > 1 and not any(word in _COMPOUND for word in run):
            continue  # "one two" is two digits, not a cardinal
        value = cardinal(run)
        if value is not None:
            return stop - i, list(str(value))
    if token in DIGIT_WORDS:
        return 1, [DIGIT_WORDS[token]]
    return 0, []


def _run_has_number(tokens: list[str], i: int) -> bool:
    """A run of "oh"s counts as zeros only where it touches a number ("oh oh seven")."""
    j = i
    while j < len(tokens) and tokens[j] in _ZERO_WORDS:
        j += 1
    k = i
    while k > 0 and tokens[k - 1] in _ZERO_WORDS:
        k -= 1
    return _is_numberish(tokens, j) or _is_numberish(tokens, k - 1)
