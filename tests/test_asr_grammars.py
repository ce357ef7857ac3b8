"""Grammar texts and the word-to-digit helper; the built-in grammars in a real PocketSphinx.

The recogniser half checks what a grammar lets through against what `app.dialog.slots` can read
back: every word in the en-US dictionary, every grammar compiled by a decoder, and sentences the
grammar accepts (listed by hand, and sampled from the grammar text) parsed to their value.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pocketsphinx import Decoder

from app.asr.base import RecognitionOptions
from app.asr.grammars import (
    BUILTIN_GRAMMARS,
    NO_WORDS,
    YES_WORDS,
    choices_grammar,
    grammar_words,
    phrase_words,
    phrases_grammar,
    with_phrases,
)
from app.asr.pocketsphinx import PocketSphinxEngine
from app.dialog import slots

TODAY = dt.date(2026, 11, 21)  # a Saturday


def test_builtin_grammars_cover_their_words() -> None:
    digits = BUILTIN_GRAMMARS["digits"]
    for word in ("zero", "oh", "one", "five", "nine"):
        assert f" {word} " in digits
    assert ")+" in digits  # any length
    yes_no = BUILTIN_GRAMMARS["yes_no"]
    assert all(f" {word} " in yes_no for word in YES_WORDS + NO_WORDS)


def test_phrases_grammar_normalises_and_deduplicates() -> None:
    assert phrase_words("Yes, please!") == ["yes", "please"]
    grammar = phrases_grammar(["Yes, please!", "that's right", "yes please"])
    assert grammar.endswith("public <phrase> = yes please | that's right ;\n")


@pytest.mark.parametrize(
    ("phrases", "message"),
    [([], "at least one"), (["ok", " ,. "], "has no words"), (["a|b"], "cannot put a|b")],
)
def test_phrases_grammar_rejects_bad_input(phrases: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        phrases_grammar(phrases)


def test_choices_grammar_lists_each_synonym_once() -> None:
    grammar = choices_grammar(slots.choice_phrases({"sales": ["buy", "Sales!"], "agent": []}))
    assert grammar.endswith("public <choice> = sales | agent | buy ;\n")
    with pytest.raises(ValueError, match="at least one synonym"):
        choices_grammar([])


def test_grammar_words_reads_rule_bodies_only() -> None:
    assert grammar_words(BUILTIN_GRAMMARS["yes_no"]) == frozenset(YES_WORDS + NO_WORDS)
    words = grammar_words(BUILTIN_GRAMMARS["time"])
    assert {"quarter", "o'clock", "am", "noon", "nine"} <= words
    assert not {"public", "time", "h12", "JSGF", "V1.0", "grammar", "|", "+"} & words


# A grammar as a dialplan author might write one: comments, weights, tags, two public rules.
USER_JSGF = """#JSGF V1.0;
/* pizza orders; sizes = small or large */
grammar pizza;  // one line
public <order> = /2/ small {s} | /1/ large {l} [ pizza ] ;
public <style> = "new york" style | chicago style ;
"""


def test_grammar_words_reads_a_hand_written_grammar() -> None:
    words = grammar_words(USER_JSGF)
    assert words == {"small", "large", "pizza", "new york", "style", "chicago"}


def test_with_phrases_adds_phrases_to_a_grammar() -> None:
    assert with_phrases(None, ["agent"]) is None  # open vocabulary hears "agent" already
    assert with_phrases("digits", []) == BUILTIN_GRAMMARS["digits"]
    combined = with_phrases("digits", ["Agent!", "an operator"])
    assert combined is not None
    assert combined.count("public ") == 1
    assert "<extra_phrases> = agent | an operator ;" in combined
    # JSGF text works too, and rule names never clash
    twice = with_phrases(combined, ["help"])
    assert twice is not None and "<with_phrases2>" in twice and "<extra_phrases2>" in twice
    with pytest.raises(ValueError, match="unknown grammar 'pin'"):
        with_phrases("pin", ["agent"])
    with pytest.raises(ValueError, match="no words"):
        with_phrases("digits", [" ? "])


# --- in a real PocketSphinx ------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(loglevel="FATAL")


@pytest.fixture(scope="module")
def dictionary(decoder: Decoder) -> frozenset[str]:
    """The words of the en-US dictionary the bundled model loads (variants "word(2)" folded)."""
    path = Path(decoder.config["dict"])
    with path.open(encoding="utf-8") as lines:
        return frozenset(line.split(" ", 1)[0].split("(", 1)[0] for line in lines if line.strip())


@pytest.mark.parametrize("name", list(BUILTIN_GRAMMARS))
def test_every_grammar_word_is_in_the_dictionary(
    name: str, decoder: Decoder, dictionary: frozenset[str]
) -> None:
    words = grammar_words(BUILTIN_GRAMMARS[name])
    assert len(words) >= 10
    assert sorted(words - dictionary) == []
    assert [w for w in sorted(words) if decoder.lookup_word(w) is None] == []


def _extra_grammars() -> dict[str, str]:
    grammars = {
        f"{name}+agent": with_phrases(name, ["agent", "operator"]) for name in BUILTIN_GRAMMARS
    }
    grammars["choices"] = choices_grammar(["account balance", "balance", "agent"])
    return {name: jsgf for name, jsgf in grammars.items() if jsgf is not None}


@pytest.mark.parametrize(("name", "jsgf"), [*BUILTIN_GRAMMARS.items(), *_extra_grammars().items()])
def test_every_grammar_compiles_in_a_decoder(name: str, jsgf: str, decoder: Decoder) -> None:
    search = "test_" + re.sub(r"\W", "_", name)
    decoder.add_jsgf_string(search, jsgf)  # ValueError if PocketSphinx cannot parse it
    decoder.activate_search(search)
    decoder.activate_search(decoder.current_search())


def test_engine_accepts_every_builtin_grammar_by_name() -> None:
    engine = PocketSphinxEngine(pool_size=1)
    for name in BUILTIN_GRAMMARS:
        engine.check_options(RecognitionOptions(grammar=name))


@pytest.mark.parametrize(
    ("base", "accepted", "refused"),
    [
        ("date", ["november twenty third", "tomorrow"], ["november", "agent tomorrow"]),
        ("digits", ["one two", "nine"], ["agent agent", "one agent"]),
        (
            USER_JSGF.replace('"new york"', "new york"),  # quoted words are one dictionary word
            ["small", "large pizza", "chicago style", "new york style"],
            ["pizza", "small style"],
        ),
    ],
)
def test_with_phrases_accepts_both_sides(
    base: str, accepted: list[str], refused: list[str], decoder: Decoder
) -> None:
    combined = with_phrases(base, ["agent", "an operator"])
    assert combined is not None
    decoder.add_jsgf_string("test_with_phrases", combined)
    fsg = decoder.parse_jsgf(combined)
    for sentence in [*accepted, "agent", "an operator"]:
        assert fsg.accept(sentence), sentence
    for sentence in [*refused, "operator"]:
        assert not fsg.accept(sentence), sentence


# Sentences each grammar accepts, and the value its slot reads from them.
ROUND_TRIPS: dict[str, list[tuple[str, str]]] = {
    "digits": [("one two three", "123"), ("oh oh seven", "007"), ("nine", "9")],
    "yes_no": [("yeah", "yes"), ("correct", "yes"), ("nope", "no"), ("incorrect", "no")],
    "number": [
        ("forty two", "42"),
        ("zero", "0"),
        ("a hundred", "100"),
        ("one hundred and five", "105"),
        ("two thousand twenty six", "2026"),
        ("two thousand and six", "2006"),
        ("a thousand", "1000"),
        ("twenty five hundred", "2500"),
        ("nine thousand nine hundred ninety nine", "9999"),
        ("four two", "42"),
        ("oh four two", "42"),
        ("one two three four five six", "123456"),
    ],
    "date": [
        ("today", "2026-11-21"),
        ("tomorrow", "2026-11-22"),
        ("the day after tomorrow", "2026-11-23"),
        ("monday", "2026-11-23"),
        ("next friday", "2026-11-27"),
        ("on this sunday", "2026-11-22"),
        ("november twenty third", "2026-11-23"),
        ("november twenty three", "2026-11-23"),
        ("november the twenty third", "2026-11-23"),
        ("the twenty third of november", "2026-11-23"),
        ("twenty third november", "2026-11-23"),
        ("twenty three of november", "2026-11-23"),
        ("the twenty third", "2026-11-23"),
        ("the twentieth", "2026-12-20"),
        ("january first", "2027-01-01"),
        ("november twenty third twenty twenty seven", "2027-11-23"),
        ("november twenty third of twenty twenty seven", "2027-11-23"),
        ("the fifth of may two thousand and six", "2006-05-05"),
        ("july fourth nineteen oh five", "1905-07-04"),
        ("march thirty first two thousand", "2000-03-31"),
    ],
    "time": [
        ("two thirty pm", "14:30"),
        ("two thirty", "14:30"),
        ("nine o'clock", "09:00"),
        ("nine o'clock in the evening", "21:00"),
        ("eleven fifteen am", "11:15"),
        ("two oh five", "14:05"),
        ("at noon", "12:00"),
        ("midday", "12:00"),
        ("twelve midnight", "00:00"),
        ("quarter past three", "15:15"),
        ("a quarter to four", "15:45"),
        ("half past ten", "10:30"),
        ("half past ten in the morning", "10:30"),
        ("ten minutes to six", "17:50"),
        ("twenty five past two pm", "14:25"),
        ("quarter past midnight", "00:15"),
        ("fourteen hundred", "14:00"),
        ("fourteen hundred hours", "14:00"),
        ("fourteen thirty", "14:30"),
        ("oh nine hundred", "09:00"),
        ("twenty three fifty nine", "23:59"),
    ],
}

READERS: dict[str, Callable[[str], str | None]] = {
    "digits": lambda text: slots.digits(text),
    "yes_no": lambda text: slots.yes_no(text),
    "number": lambda text: slots.number(text),
    "date": lambda text: slots.date(text, today=TODAY),
    "time": lambda text: slots.time_of_day(text),
}


def test_every_builtin_grammar_has_a_reader() -> None:
    assert set(READERS) == set(BUILTIN_GRAMMARS) == set(ROUND_TRIPS)
    grammars = {slot.grammar for slot in slots.SLOT_TYPES.values() if slot.grammar}
    assert grammars == set(BUILTIN_GRAMMARS)


@pytest.mark.parametrize(
    ("name", "sentence", "value"),
    [(name, sentence, value) for name, cases in ROUND_TRIPS.items() for sentence, value in cases],
)
def test_listed_sentences_are_accepted_and_read_back(
    name: str, sentence: str, value: str, decoder: Decoder
) -> None:
    assert decoder.parse_jsgf(BUILTIN_GRAMMARS[name]).accept(sentence)
    assert READERS[name](sentence) == value


# A date the grammar lets through may still not exist ("april thirty first"): only a day of
# 29-31 may come back None.
_LATE_DAY = re.compile(r"\b(twenty nin(e|th)|thirt(y|ieth))\b")


@pytest.mark.parametrize("name", list(BUILTIN_GRAMMARS))
def test_sampled_sentences_are_accepted_and_understood(name: str, decoder: Decoder) -> None:
    jsgf = BUILTIN_GRAMMARS[name]
    fsg = decoder.parse_jsgf(jsgf)
    sampler = _Sampler(jsgf, random.Random(f"{name}-1"))
    sentences = {sampler.sentence() for _ in range(400)}
    for sentence in sorted(sentences):
        assert fsg.accept(sentence), f"the sampler made {sentence!r}, which {name} refuses"
        value = READERS[name](sentence)
        if value is None:
            assert name == "date" and _LATE_DAY.search(sentence), (name, sentence)


class _Sampler:
    """Random sentences from the JSGF subset this project writes: rules, | ( ) [ ] + *."""

    _TOKEN = re.compile(r"<[^<>\s]+>|[()\[\]|+*]|[^\s()\[\]|+*<>]+")

    def __init__(self, jsgf: str, rng: random.Random) -> None:
        self.rng = rng
        self.rules: dict[str, tuple] = {}
        self.start = ""
        for statement in jsgf.split(";")[2:]:
            if "=" not in statement:
                continue
            head, body = statement.split("=", 1)
            name = head.split("<", 1)[1].split(">", 1)[0]
            self.rules[name], _ = self._parse(self._TOKEN.findall(body), 0, None)
            if "public" in head and not self.start:
                self.start = name

    def sentence(self) -> str:
        return " ".join(self._sample(self.rules[self.start]))

    def _parse(self, tokens: list[str], i: int, close: str | None) -> tuple[tuple, int]:
        alternatives: list[list[tuple]] = [[]]
        while i < len(tokens) and tokens[i] != close:
            token = tokens[i]
            i += 1
            if token == "|":
                alternatives.append([])
                continue
            if token in ("(", "["):
                inner, i = self._parse(tokens, i, ")" if token == "(" else "]")
                node: tuple = ("optional" if token == "[" else "group", inner)
                i += 1  # the closing bracket
            elif token.startswith("<"):
                node = ("rule", token[1:-1])
            else:
                node = ("word", token)
            if i < len(tokens) and tokens[i] in ("+", "*"):
                node = (tokens[i], node)
                i += 1
            alternatives[-1].append(node)
        return ("alternatives", alternatives), i

    def _sample(self, node: tuple) -> list[str]:
        kind, what = node
        if kind == "word":
            return [what]
        if kind == "rule":
            return self._sample(self.rules[what])
        if kind == "group":
            return self._sample(what)
        if kind == "optional":
            return self._sample(what) if self.rng.random() < 0.5 else []
        if kind in ("+", "*"):
            times = self.rng.randint(1 if kind == "+" else 0, 5)
            return [word for _ in range(times) for word in self._sample(what)]
        sequence = self.rng.choice(what)
        return [word for item in sequence for word in self._sample(item)]
