"""Text normalisation for scoring: what a reference and a transcript must agree on.

Engines write the same words differently ("Twenty-three.", "23", "two three", "oh four"), and a
word error rate that counts those as errors measures formatting, not hearing. Both sides go
through `normalise` before scoring:

- case folded, apostrophes dropped ("it's" -> "its"), other punctuation a space;
- numbers to digits, one token per digit, read as the product reads them
  (`app.asr.numbers`): numerals ("4711", "1,234", "599-341"), digit words ("four seven one
  one"), cardinals ("twenty three", "nineteen eighty four" -> 1 9 8 4), "double five", and a
  digit's homophones inside a run of digits ("four one to seven"); "oh" and "o" count as zero
  only next to another number, so an exclamation stays a word.

Digits as single tokens make a misheard digit cost one error, as it does a caller. The digits of
a normalised text, joined, are its entity (`digit_string`): what a PIN or account step keeps.
"""

from __future__ import annotations

import re
import unicodedata

from app.asr.numbers import number_runs

_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NOT_WORD = re.compile(r"[^\w]+|_")


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
    for start, end, digits in number_runs(tokens):
        out.extend(tokens[i:start])
        out.extend(digits)
        i = end
    out.extend(tokens[i:])
    return " ".join(out)


def digit_string(normalised: str) -> str:
    """The digits of an already normalised text, in order: its entity for exact-match scoring."""
    return "".join(t for t in normalised.split() if t.isdigit())
