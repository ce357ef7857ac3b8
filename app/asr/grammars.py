"""Built-in grammars, phrase-list grammars, and the word-to-digit helper the dialogue uses.

Grammars are written here once as JSGF so every engine that takes constraints words a question
the same way. Engine-neutral: nothing here imports a recogniser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DIGIT_WORDS: dict[str, str] = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}

# Kept in step with the dialogue's yes/no sets, so whatever the grammar allows is understood.
YES_WORDS = ("yes", "yeah", "yep", "yup", "correct", "right", "sure", "affirmative")
NO_WORDS = ("no", "nope", "nah", "wrong", "incorrect", "negative")

# Number words that change the value but are not one digit each: reading past them silently
# would fill a variable with the wrong digits, so `digits_from_words` refuses them.
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen")
_TENS = ("eighteen", "nineteen", "twenty", "thirty", "forty", "fifty", "sixty", "seventy")
_NON_DIGIT_NUMBERS = frozenset(
    (*_TEENS, *_TENS, "eighty", "ninety", "hundred", "thousand", "million", "double", "triple")
)

_SPOKEN_DIGITS = (
    "zero",
    "oh",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)


def _jsgf(name: str, rule: str, body: str) -> str:
    return f"#JSGF V1.0;\ngrammar {name};\npublic <{rule}> = {body} ;\n"


BUILTIN_GRAMMARS: dict[str, str] = {
    # Any number of digits: a PIN, an account number, a date as digits.
    "digits": _jsgf("digits", "digits", "( " + " | ".join(_SPOKEN_DIGITS) + " )+"),
    "yes_no": _jsgf("yes_no", "answer", " | ".join(YES_WORDS + NO_WORDS)),
}

_TOKEN = re.compile(r"[a-z0-9']+")
_EDGE_PUNCTUATION = '.,;:!?"()[]{}'


def digits_from_words(text: str) -> str:
    """'one two oh' -> '120'.

    Numerals pass through ("1 2" -> "12"); words that are not numbers ("uh", "my", "is") are
    skipped, so open-vocabulary text works too. Returns '' when no digit was heard. Raises
    ValueError on number words that are not single digits ("twenty", "double"): a guess there
    would store a wrong number, and asking again is better.
    """
    out = []
    for token in _TOKEN.findall(text.lower()):
        if token.isdigit():
            out.append(token)
        elif token in DIGIT_WORDS:
            out.append(DIGIT_WORDS[token])
        elif token in _NON_DIGIT_NUMBERS:
            raise ValueError(f"{token!r} in {text!r} is not a single digit")
    return "".join(out)


def phrase_words(phrase: str) -> list[str]:
    """The words of one phrase as a grammar uses them: lower case, edge punctuation dropped.

    "Yes, please!" -> ["yes", "please"]. A word keeps inner characters ("that's"), so a word the
    recogniser cannot know stays visible to its dictionary check instead of being mangled.
    """
    words = [word.strip(_EDGE_PUNCTUATION) for word in phrase.lower().split()]
    return [word for word in words if word]


def phrases_grammar(phrases: Iterable[str]) -> str:
    """A JSGF grammar accepting exactly one of `phrases`. ValueError on an empty list/phrase."""
    alternatives = []
    for phrase in phrases:
        words = phrase_words(phrase)
        if not words:
            raise ValueError(f"phrase {phrase!r} has no words")
        bad = [word for word in words if not _TOKEN.fullmatch(word)]
        if bad:
            raise ValueError(f"phrase {phrase!r}: cannot put {', '.join(bad)} in a grammar")
        alternatives.append(" ".join(words))
    if not alternatives:
        raise ValueError("a phrase list needs at least one phrase")
    unique = list(dict.fromkeys(alternatives))
    return _jsgf("phrases", "phrase", " | ".join(unique))
