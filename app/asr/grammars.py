"""Built-in grammars, phrase-list grammars, and the number vocabularies they share.

Grammars are written here once as JSGF so every engine that takes constraints words a question
the same way. Engine-neutral: nothing here imports a recogniser.

The vocabularies below (number words, ordinals, months, weekdays) are shared with
`app.dialog.slots`, which turns what a grammar lets through back into a value: a word added to
a grammar without its meaning there would be heard and then not understood. Every word used in a
built-in grammar is in the PocketSphinx en-US dictionary (tests/test_asr_grammars.py checks it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

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

_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen")

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

# Cardinal and ordinal words by value, months and weekdays in calendar order (January = 1,
# Monday = 0 as in `datetime.date.weekday()`).
UNIT_WORDS: dict[str, int] = {word: int(DIGIT_WORDS[word]) for word in _SPOKEN_DIGITS[2:]}
TEEN_WORDS: dict[str, int] = {
    word: 10 + i
    for i, word in enumerate(
        (*_TEENS, "eighteen", "nineteen"),
    )
}
TENS_WORDS: dict[str, int] = {
    word: 10 * i
    for i, word in enumerate(
        ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"), start=2
    )
}
ORDINAL_WORDS: dict[str, int] = {
    word: i
    for i, word in enumerate(
        (
            "first",
            "second",
            "third",
            "fourth",
            "fifth",
            "sixth",
            "seventh",
            "eighth",
            "ninth",
            "tenth",
            "eleventh",
            "twelfth",
            "thirteenth",
            "fourteenth",
            "fifteenth",
            "sixteenth",
            "seventeenth",
            "eighteenth",
            "nineteenth",
            "twentieth",
        ),
        start=1,
    )
} | {"thirtieth": 30}
MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _alt(words: Iterable[str]) -> str:
    return "( " + " | ".join(words) + " )"


def _jsgf(name: str, rule: str, body: str, rules: dict[str, str] | None = None) -> str:
    """One public rule (engines start from the first public rule) plus private helpers."""
    private = "".join(f"<{n}> = {b} ;\n" for n, b in (rules or {}).items())
    return f"#JSGF V1.0;\ngrammar {name};\npublic <{rule}> = {body} ;\n{private}"


_UNIT = _alt(UNIT_WORDS)
_TEEN = _alt(TEEN_WORDS)
_TENS = _alt(TENS_WORDS)
_NUMBER_RULES = {
    "digit": _alt(_SPOKEN_DIGITS),
    "unit": _UNIT,
    "teen": _TEEN,
    "tens": _TENS,
    "below100": "<unit> | <teen> | <tens> [ <unit> ]",
    "below1000": "<below100> | ( a | <unit> ) hundred [ [ and ] <below100> ]",
    # "two thousand and five", "twenty five hundred", "nine thousand nine hundred ninety nine"
    "cardinal": (
        "<below1000> | ( a | <unit> ) thousand [ [ and ] <below1000> ]"
        " | ( <teen> | <tens> [ <unit> ] ) hundred [ [ and ] <below100> ]"
    ),
}

_ORD_UNIT = [w for w, v in ORDINAL_WORDS.items() if v < 10]
_DATE_RULES = {
    "unit": _UNIT,
    "teen": _TEEN,
    "tens": _TENS,
    "month": _alt(MONTHS),
    "weekday": _alt(WEEKDAYS),
    "ordinal": " | ".join(
        (*ORDINAL_WORDS, "twenty " + _alt(_ORD_UNIT), "thirty first"),
    ),
    "day": "<ordinal> | <unit> | <teen> | twenty [ <unit> ] | thirty [ one ]",
    # "twenty twenty seven", "nineteen oh five", "two thousand and six"
    "year": (
        "( nineteen | twenty ) ( <teen> | <tens> [ <unit> ] | oh <unit> )"
        " | two thousand [ [ and ] ( <unit> | <teen> | <tens> [ <unit> ] ) ]"
    ),
    "absolute": (
        "<month> [ the ] <day> [ [ of ] <year> ] | [ the ] <day> [ of ] <month> [ [ of ] <year> ]"
    ),
}

_H12 = (*UNIT_WORDS, "ten", "eleven", "twelve")
_TIME_RULES = {
    "unit": _UNIT,
    "teen": _TEEN,
    "h12": _alt(_H12),
    # 24-hour hours that are not also 12-hour ones, said as such: "zero", "oh nine", "fourteen"
    "h24": _alt(
        (
            "zero",
            "oh <unit>",
            *(w for w, v in TEEN_WORDS.items() if v > 12),
            "twenty [ one | two | three ]",
        )
    ),
    "minutes": "oh <unit> | <teen> | ( twenty | thirty | forty | fifty ) [ <unit> ]",
    "count": "<unit> | <teen> | twenty [ <unit> ]",
    "meridiem": "am | pm | in the ( morning | afternoon | evening )",
    "clock12": "<h12> [ <minutes> | o'clock ] [ <meridiem> ]",
    "clock24": "( <h24> | <h12> ) hundred [ hours ] | <h24> <minutes> [ hours ]",
    "hour": "<h12> [ <meridiem> ] | noon | midnight",
    "relative": (
        "( [ a ] quarter | half | <count> [ minutes | minute ] ) ( past | after ) <hour>"
        " | ( [ a ] quarter | <count> [ minutes | minute ] ) ( to | before | of ) <hour>"
    ),
}

BUILTIN_GRAMMARS: dict[str, str] = {
    # Any number of digits: a PIN, an account number, a date as digits.
    "digits": _jsgf("digits", "digits", "( " + " | ".join(_SPOKEN_DIGITS) + " )+"),
    "yes_no": _jsgf("yes_no", "answer", " | ".join(YES_WORDS + NO_WORDS)),
    # A cardinal up to 9999 ("one hundred and five"), or two or more digits ("four two").
    "number": _jsgf("number", "number", "zero | <cardinal> | <digit> <digit>+", _NUMBER_RULES),
    # "tomorrow", "next friday", "november twenty third [twenty twenty seven]", "the third".
    "date": _jsgf(
        "date",
        "date",
        "[ on ] ( today | tomorrow | [ the ] day after tomorrow"
        " | [ this | next | coming ] <weekday> | <absolute> | [ the ] <ordinal> )",
        _DATE_RULES,
    ),
    # "two thirty pm", "quarter to four", "fourteen hundred", "noon".
    "time": _jsgf(
        "time",
        "time",
        "[ at ] ( noon | midday | midnight | twelve ( noon | midnight )"
        " | <clock12> | <clock24> | <relative> )",
        _TIME_RULES,
    ),
}

_TOKEN = re.compile(r"[a-z0-9']+")
_EDGE_PUNCTUATION = '.,;:!?"()[]{}'


def phrase_words(phrase: str) -> list[str]:
    """The words of one phrase as a grammar uses them: lower case, edge punctuation dropped.

    "Yes, please!" -> ["yes", "please"]. A word keeps inner characters ("that's"), so a word the
    recogniser cannot know stays visible to its dictionary check instead of being mangled.
    """
    words = [word.strip(_EDGE_PUNCTUATION) for word in phrase.lower().split()]
    return [word for word in words if word]


def _alternatives(phrases: Iterable[str], what: str) -> str:
    alternatives = []
    for phrase in phrases:
        words = phrase_words(phrase)
        if not words:
            raise ValueError(f"{what} {phrase!r} has no words")
        bad = [word for word in words if not _TOKEN.fullmatch(word)]
        if bad:
            raise ValueError(f"{what} {phrase!r}: cannot put {', '.join(bad)} in a grammar")
        alternatives.append(" ".join(words))
    if not alternatives:
        raise ValueError(f"a {what} list needs at least one {what}")
    return " | ".join(dict.fromkeys(alternatives))


def phrases_grammar(phrases: Iterable[str]) -> str:
    """A JSGF grammar accepting exactly one of `phrases`. ValueError on an empty list/phrase."""
    return _jsgf("phrases", "phrase", _alternatives(phrases, "phrase"))


def choices_grammar(synonyms: Iterable[str]) -> str:
    """A JSGF grammar accepting exactly one of the synonyms of a `choice` question.

    Pass every way of saying every choice, the values included (`app.dialog.slots.
    choice_phrases` flattens a choices mapping so). ValueError on an empty list/synonym.
    """
    return _jsgf("choices", "choice", _alternatives(synonyms, "synonym"))


_PUBLIC = re.compile(r"\bpublic\s+<([^<>\s]+)>")
_RULE_NAME = re.compile(r"<([^<>\s]+)>\s*=")
_HEADER = re.compile(r"#JSGF[^;]*;")
_GRAMMAR_NAME = re.compile(r"\bgrammar\s+[^\s;]+\s*;")


def with_phrases(base: str | None, phrases: Sequence[str]) -> str | None:
    """A JSGF grammar accepting what `base` accepts or one of `phrases` ("agent", "operator").

    `base` is a built-in grammar's name or JSGF text; None means open vocabulary, which already
    hears any phrase, so the answer is None too. No phrases: `base` as it is (resolved to its
    JSGF). The base's public rules become private alternatives of one new public rule, named
    so as not to clash with the base's. ValueError on an unknown name, a grammar without a
    public rule, and a phrase `phrases_grammar` would refuse.
    """
    if base is None:
        return None
    jsgf = BUILTIN_GRAMMARS.get(base, base)
    if not _HEADER.search(jsgf):
        known = ", ".join(BUILTIN_GRAMMARS)
        raise ValueError(f"unknown grammar {base!r} (built-in: {known}; or JSGF text)")
    if not phrases:
        return jsgf
    extra = _alternatives(phrases, "phrase")
    public = list(dict.fromkeys(_PUBLIC.findall(jsgf)))
    if not public:
        raise ValueError("the grammar has no public rule to add phrases to")
    taken = set(_RULE_NAME.findall(jsgf))
    top, extra_rule = _fresh("with_phrases", taken), _fresh("extra_phrases", taken)
    body = _GRAMMAR_NAME.sub("", _HEADER.sub("", jsgf, count=1), count=1).strip("\n")
    body = _PUBLIC.sub(lambda m: f"<{m.group(1)}>", body)
    alternatives = " | ".join(f"<{name}>" for name in (*public, extra_rule))
    return (
        f"#JSGF V1.0;\ngrammar {top};\npublic <{top}> = {alternatives} ;\n"
        f"<{extra_rule}> = {extra} ;\n{body}\n"
    )


def _fresh(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}{n}"
    return candidate


_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_NOT_WORD = re.compile(r"<[^<>]*>|/[^/]*/|\{[^}]*\}|[|()\[\]+*;=]")
_QUOTED = re.compile(r'"([^"]*)"')


def grammar_words(jsgf: str) -> frozenset[str]:
    """The words a JSGF grammar can produce (for checking them against a dictionary).

    Reads the rule bodies: rule references, weights (/10/), tags ({...}) and comments are not
    words; a quoted token is one word, spaces and all ("new york"), as PocketSphinx reads it.
    The header, grammar name and imports have no body.
    """
    words: set[str] = set()
    for statement in _COMMENT.sub(" ", jsgf).split(";"):
        if "=" in statement:
            body = _NOT_WORD.sub(" ", statement.split("=", 1)[1])
            words.update(_QUOTED.findall(body))
            words.update(_QUOTED.sub(" ", body).split())
    return frozenset(words)
