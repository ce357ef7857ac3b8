"""Grammar texts and the word-to-digit helper (no recogniser needed)."""

from __future__ import annotations

import pytest

from app.asr.grammars import (
    BUILTIN_GRAMMARS,
    NO_WORDS,
    YES_WORDS,
    digits_from_words,
    phrase_words,
    phrases_grammar,
)


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("one two oh", "120"),
        ("zero nine eight seven six five four three two one", "0987654321"),
        ("One Two  THREE", "123"),
        ("uh my number is four four two", "442"),
        ("1 2 three", "123"),
        ("", ""),
        ("yes please", ""),
    ],
)
def test_digits_from_words(text: str, digits: str) -> None:
    assert digits_from_words(text) == digits


@pytest.mark.parametrize("text", ["twenty one", "double five", "one hundred", "triple two"])
def test_digits_from_words_refuses_numbers_that_are_not_digits(text: str) -> None:
    with pytest.raises(ValueError, match="not a single digit"):
        digits_from_words(text)


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
