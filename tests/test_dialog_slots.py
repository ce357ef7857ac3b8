"""Slot interpretation: spoken text and keypad digits to normalised values (no recogniser)."""

from __future__ import annotations

import datetime as dt

import pytest

from app.asr.grammars import BUILTIN_GRAMMARS
from app.dialog import slots
from app.dialog.slots import (
    SLOT_TYPES,
    choice,
    choice_phrases,
    date,
    digits,
    free_text,
    number,
    phrase,
    time_of_day,
    yes_no,
)

TODAY = dt.date(2026, 11, 21)  # a Saturday


# --- digits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("one two three", "123"),
        ("oh one two", "012"),
        ("uh my number is four four two", "442"),
        ("4 4 2", "442"),
        ("twenty one", "21"),  # callers group digits as they like (app.asr.numbers)
        ("double five", "55"),
        ("599-341", "599341"),
        ("yes please", None),
        ("", None),
    ],
)
def test_digits_from_speech(text: str, expected: str | None) -> None:
    assert digits(text) == expected


@pytest.mark.parametrize(
    ("dtmf", "expected"),
    [("0123", "0123"), ("7", "7"), ("12*3", None), ("#", None), ("", None)],
)
def test_digits_from_keypad(dtmf: str, expected: str | None) -> None:
    assert digits(dtmf=dtmf) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"text": "one two three", "min_len": 4}, None),
        ({"text": "one two three four", "min_len": 4, "max_len": 4}, "1234"),
        ({"dtmf": "12345", "max_len": 4}, None),
        ({"dtmf": "1234", "min_len": 4, "max_len": 6}, "1234"),
    ],
)
def test_digits_length_bounds(kwargs: dict, expected: str | None) -> None:
    assert digits(**kwargs) == expected


def test_no_input_is_none_and_both_inputs_are_an_error() -> None:
    assert digits() is None
    assert yes_no() is None
    assert date(today=TODAY) is None
    with pytest.raises(ValueError, match="not both"):
        number("four", dtmf="4")


# --- yes / no ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("Yeah, that's right", "yes"),
        ("sure", "yes"),
        ("no", "no"),
        ("nope", "no"),
        ("that's not right", "no"),
        ("no that is not correct", "no"),
        ("yes no", None),
        ("maybe", None),
        ("", None),
    ],
)
def test_yes_no_from_speech(text: str, expected: str | None) -> None:
    assert yes_no(text) == expected


@pytest.mark.parametrize(("dtmf", "expected"), [("1", "yes"), ("2", "no"), ("3", None)])
def test_yes_no_from_keypad(dtmf: str, expected: str | None) -> None:
    assert yes_no(dtmf=dtmf) == expected


# --- number --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("forty two", "42"),
        ("forty-two", "42"),
        ("zero", "0"),
        ("seven", "7"),
        ("thirteen", "13"),
        ("a hundred", "100"),
        ("one hundred and five", "105"),
        ("two hundred ten", "210"),
        ("a thousand", "1000"),
        ("two thousand twenty six", "2026"),
        ("two thousand and six", "2006"),
        ("twenty five hundred", "2500"),
        ("nine thousand nine hundred ninety nine", "9999"),
        ("four two", "42"),  # digit by digit
        ("one oh five", "105"),
        ("42", "42"),
        ("1,000", "1000"),
        ("uh my number is forty two", "42"),
        ("oh, forty two", "42"),
        ("forty forty", None),
        ("one hundred hundred", None),
        ("hundred thousand hundred", None),
        ("a", None),
        ("none", None),
        ("", None),
    ],
)
def test_number_from_speech(text: str, expected: str | None) -> None:
    assert number(text) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"dtmf": "042"}, "42"),
        ({"dtmf": "0"}, "0"),
        ({"dtmf": "4*2"}, None),
        ({"text": "forty two", "minimum": 1, "maximum": 42}, "42"),
        ({"text": "forty three", "minimum": 1, "maximum": 42}, None),
        ({"text": "zero", "minimum": 1}, None),
        ({"dtmf": "99", "maximum": 10}, None),
    ],
)
def test_number_keypad_and_bounds(kwargs: dict, expected: str | None) -> None:
    assert number(**kwargs) == expected


# --- date (today is Saturday 2026-11-21) ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", "2026-11-21"),
        ("tomorrow", "2026-11-22"),
        ("the day after tomorrow", "2026-11-23"),
        ("tomorrow please", "2026-11-22"),
        # weekdays: the next one strictly after today, whatever the modifier
        ("monday", "2026-11-23"),
        ("on friday", "2026-11-27"),
        ("this friday", "2026-11-27"),
        ("next friday", "2026-11-27"),
        ("saturday", "2026-11-28"),  # today is Saturday: "today" says today
        ("next saturday", "2026-11-28"),
        # month and day, either order, ordinal or cardinal
        ("november twenty third", "2026-11-23"),
        ("november twenty three", "2026-11-23"),
        ("november the twenty third", "2026-11-23"),
        ("the twenty third of november", "2026-11-23"),
        ("twenty third november", "2026-11-23"),
        ("uh on november 23rd", "2026-11-23"),
        ("november twenty first", "2026-11-21"),  # today counts
        ("november twentieth", "2027-11-20"),  # past this year: next year
        ("december thirty first", "2026-12-31"),
        ("january first", "2027-01-01"),  # year end
        ("february twenty ninth", "2028-02-29"),  # the next leap year
        # with a year
        ("november twenty third twenty twenty seven", "2027-11-23"),
        ("november twenty, twenty twenty six", "2026-11-20"),  # past, but the year was said
        ("the fifth of may two thousand and six", "2006-05-05"),
        ("march third nineteen eighty", "1980-03-03"),
        ("july fourth nineteen oh five", "1905-07-04"),
        ("june first 2027", "2027-06-01"),
        # the day alone: this month unless past, else next month
        ("the twenty third", "2026-11-23"),
        ("the twenty first", "2026-11-21"),
        ("the twentieth", "2026-12-20"),
        ("the first", "2026-12-01"),
        ("the thirty first", "2026-12-31"),  # November has no 31st
        # a weekday with a date must agree
        ("monday november twenty third", "2026-11-23"),
        ("tuesday november twenty third", None),
        # no date
        ("february thirtieth", None),
        ("february thirtieth twenty twenty seven", None),
        ("november thirty second", None),
        ("twenty three", None),  # a bare cardinal is not a day
        ("november december first", None),
        ("monday friday", None),
        ("some day", None),
        ("", None),
    ],
)
def test_date_from_speech(text: str, expected: str | None) -> None:
    assert date(text, today=TODAY) == expected


@pytest.mark.parametrize(
    ("dtmf", "expected"),
    [
        ("1123", "2026-11-23"),  # MMDD: the next such date
        ("1120", "2027-11-20"),
        ("0101", "2027-01-01"),
        ("11232027", "2027-11-23"),  # MMDDYYYY
        ("07041976", "1976-07-04"),
        ("0230", None),
        ("1301", None),
        ("2311", None),  # day first is not the convention
        ("112", None),
        ("11*3", None),
    ],
)
def test_date_from_keypad(dtmf: str, expected: str | None) -> None:
    assert date(dtmf=dtmf, today=TODAY) == expected


def test_date_year_end_rollover() -> None:
    new_years_eve = dt.date(2026, 12, 31)
    assert date("tomorrow", today=new_years_eve) == "2027-01-01"
    assert date("friday", today=new_years_eve) == "2027-01-01"
    assert date("the first", today=new_years_eve) == "2027-01-01"
    assert date("december thirtieth", today=new_years_eve) == "2027-12-30"


# --- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("two thirty pm", "14:30"),
        ("two thirty p.m.", "14:30"),
        ("2:30 p m", "14:30"),
        ("two thirty am", "02:30"),
        ("two thirty", "14:30"),  # 1-6 without am/pm: afternoon
        ("six", "18:00"),
        ("seven", "07:00"),  # 7-11: morning
        ("eleven fifteen", "11:15"),
        ("twelve thirty", "12:30"),
        ("twelve thirty am", "00:30"),
        ("twelve pm", "12:00"),
        ("nine o'clock", "09:00"),
        ("nine o'clock in the evening", "21:00"),
        ("seven in the morning", "07:00"),
        ("three in the afternoon", "15:00"),
        ("two oh five", "14:05"),
        ("at ten forty five", "10:45"),
        ("noon", "12:00"),
        ("midday", "12:00"),
        ("twelve noon", "12:00"),
        ("midnight", "00:00"),
        ("quarter past three", "15:15"),
        ("a quarter past three", "15:15"),
        ("half past ten", "10:30"),
        ("half past twelve", "12:30"),
        ("quarter to four", "15:45"),
        ("quarter of seven am", "06:45"),
        ("ten to six", "17:50"),
        ("twenty five minutes past two", "14:25"),
        ("five after nine pm", "21:05"),
        ("quarter past midnight", "00:15"),
        ("ten to midnight", "23:50"),
        ("quarter to one", "12:45"),
        ("fourteen hundred", "14:00"),
        ("fourteen hundred hours", "14:00"),
        ("fourteen thirty", "14:30"),
        ("oh nine hundred", "09:00"),
        ("zero thirty", "00:30"),
        ("twenty three fifty nine", "23:59"),
        ("1430", "14:30"),
        ("930 am", "09:30"),
        ("0930", "09:30"),
        ("14:30", "14:30"),
        ("uh I'd like to come at two", "14:00"),
        ("fourteen pm", None),
        ("thirteen thirty am", None),
        ("half to four", None),
        ("twenty four hundred", None),
        ("two sixty", None),
        ("twenty five", None),  # hour 20 and minute 5 is not how a time is said
        ("noon pm", None),
        ("later", None),
        ("", None),
    ],
)
def test_time_from_speech(text: str, expected: str | None) -> None:
    assert time_of_day(text) == expected


@pytest.mark.parametrize(
    ("dtmf", "expected"),
    [
        ("1430", "14:30"),
        ("0905", "09:05"),
        ("0000", "00:00"),
        ("2400", None),
        ("1260", None),
        ("930", None),  # always four digits
        ("14*30", None),
    ],
)
def test_time_from_keypad(dtmf: str, expected: str | None) -> None:
    assert time_of_day(dtmf=dtmf) == expected


# --- choice, phrase, text ------------------------------------------------------------------

CHOICES = {
    "balance": ["account balance", "how much do I have"],
    "accounts": ["account", "my accounts"],
    "agent": ["operator", "a person", "human"],
    "sales": ["buy", "sales department"],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("balance", "balance"),  # the value is a synonym too
        ("Account balance, please!", "balance"),
        ("account", "accounts"),
        ("I want my account balance", "balance"),  # "account" inside the longer synonym
        ("how much do i have", "balance"),
        ("talk to a person", "agent"),
        ("OPERATOR", "agent"),
        ("uh my accounts", "accounts"),
        ("I'd like to buy", "sales"),
        ("operator or balance", None),  # two choices: ambiguous
        ("sales or my account balance", None),
        ("personal", None),  # whole words only
        ("nothing", None),
        ("", None),
    ],
)
def test_choice_from_speech(text: str, expected: str | None) -> None:
    assert choice(text, choices=CHOICES) == expected


def test_choice_synonym_shared_by_two_choices_is_ambiguous() -> None:
    shared = {"billing": ["payments", "account"], "support": ["help", "account"]}
    assert choice("account", choices=shared) is None
    assert choice("help with my account", choices=shared) is None
    assert choice("help", choices=shared) == "support"


@pytest.mark.parametrize(
    ("dtmf", "keys", "expected"),
    [
        ("1", {"1": "balance", "0": "agent"}, "balance"),
        ("0", {"1": "balance", "0": "agent"}, "agent"),
        ("2", {"1": "balance"}, None),
        ("1", None, None),
    ],
)
def test_choice_from_keypad(dtmf: str, keys: dict[str, str] | None, expected: str | None) -> None:
    assert choice(dtmf=dtmf, choices=CHOICES, keys=keys) == expected


def test_choice_phrases_lists_values_and_synonyms_once() -> None:
    assert choice_phrases({"a": ["x", "b"], "b": ["y"]}) == ["a", "b", "x", "y"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes please", "Yes, please!"),
        ("YES  please", "Yes, please!"),
        ("thats right", "That's right"),
        ("that's right", "That's right"),
        ("yes", None),
        ("", None),
        (None, None),
    ],
)
def test_phrase(text: str | None, expected: str | None) -> None:
    assert phrase(text, ["Yes, please!", "That's right"]) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"text": " hello   there "}, "hello there"),
        ({"text": "  "}, None),
        ({"dtmf": "12#"}, "12#"),
        ({}, None),
    ],
)
def test_free_text(kwargs: dict, expected: str | None) -> None:
    assert free_text(**kwargs) == expected


# --- the registry --------------------------------------------------------------------------


def test_slot_types_name_every_type_and_a_real_grammar() -> None:
    assert list(SLOT_TYPES) == ["digits", "yes_no", "number", "date", "time", "choice", "text"]
    for name, slot in SLOT_TYPES.items():
        assert slot.name == name
        assert slot.grammar is None or slot.grammar in BUILTIN_GRAMMARS
        assert getattr(slots, slot.interpret.__name__) is slot.interpret
    assert SLOT_TYPES["time"].interpret is time_of_day
    with pytest.raises(TypeError):
        SLOT_TYPES["new"] = SLOT_TYPES["text"]  # type: ignore[index]
