"""The one reader of spoken numbers (app.asr.numbers), on what callers say and engines write."""

from __future__ import annotations

import pytest

from app.asr.numbers import cardinal, digit_words, spoken_digits, tokens


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        # digit words, numerals and what separates them
        ("one two oh", "120"),
        ("zero nine eight seven six five four three two one", "0987654321"),
        ("One Two  THREE", "123"),
        ("1 2 three", "123"),
        ("599-341-511", "599341511"),
        ("4,170", "4170"),
        ("(555) 12 34.", "5551234"),
        ("Four, one, seven, zero.", "4170"),
        ("5... 8... 2... 9...", "5829"),
        # lead-ins and fillers are not numbers
        ("uh my number is four four two", "442"),
        ("My PIN is 5600.", "5600"),
        ("", ""),
        ("yes please", ""),
        # oh / o: zero next to a number, an exclamation otherwise
        ("four oh two", "402"),
        ("oh oh seven", "007"),
        ("Oh, it's 4 1 7", "417"),
        ("oh", "0"),  # the whole answer: what a digits grammar gives for a zero
        # double and triple
        ("double five three", "553"),
        ("my number is double 5, 3-4 oh", "55340"),
        ("triple two one", "2221"),
        ("double oh seven", "007"),
        # cardinals expand to their digits
        ("twenty three", "23"),
        ("nineteen eighty four", "1984"),
        ("a hundred and five", "105"),
        ("forty-five", "45"),
        ("nine eleven", "911"),
        ("two thousand and twenty six", "2026"),
        # homophones count inside a run of digits only
        ("four one to seven", "4127"),
        ("7 to 0, 3, 0.", "72030"),
        ("Put one for three, seven.", "1437"),
        ("4 a 1", "481"),
        ("the number is two to two", "222"),
        ("You said for 0719. Thank you.", "40719"),  # Whisper on Piper's "four zero seven..."
        ("one two to", "122"),
        ("I want to pay 4 1 7", "417"),
        ("4 1 7 for my account", "417"),
        ("to", ""),
        ("send it to me", ""),
    ],
)
def test_spoken_digits(text: str, digits: str) -> None:
    assert spoken_digits(text) == digits


def test_digit_words_is_the_grammar_form() -> None:
    assert digit_words("4170") == "four one seven zero"
    assert digit_words("") == ""


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("forty two", 42),
        ("a hundred and five", 105),
        ("two thousand and twenty six", 2026),
        ("twenty five hundred", 2500),
        ("zero", 0),
        ("one two", None),
        ("", None),
    ],
)
def test_cardinal(text: str, value: int | None) -> None:
    assert cardinal(tokens(text)) == value
