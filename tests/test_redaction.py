"""PII redaction of call records: hand-made cases with known answers, valid numbers redacted
and look-alikes that fail their check kept, events, and the `[privacy]` configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.call.events import (
    CallEnded,
    CallStarted,
    DialogStarted,
    StepEntered,
    StepResult,
    TurnCompleted,
    VariableSet,
)
from app.config import ConfigError, PrivacyConfig, load_config
from app.store.redaction import BUILTIN_RULES, Redactor

ALL = Redactor(BUILTIN_RULES)
DEFAULT = Redactor()
CARD, IBAN, NATIONAL_ID = "[redacted:card]", "[redacted:iban]", "[redacted:national_id]"


@pytest.mark.parametrize(
    "number",
    ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "6011111111111117"],
)
def test_valid_card_numbers_are_redacted(number):
    assert DEFAULT.redact(f"my card is {number}, thanks") == f"my card is {CARD}, thanks"


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # same length, fails Luhn
        "5500-0000-0000-0005",
        "0000 0000 0000 0000",  # Luhn-valid but no card starts with 0
        "account 12345678, call me at 10 30",
        "4111  1111  1111  1111",  # double spaces: separate numbers, not one
        "+4111 1111 1111 1111",  # after "+": a phone number
        "policy 41111111111111111111111",  # 29 digits: too long to be a card
    ],
)
def test_numbers_that_are_not_cards_are_kept(text):
    assert DEFAULT.redact(text) == text


def test_a_card_among_other_numbers_is_found_alone():
    text = "order 12 card 4111 1111 1111 1111 expires 12 27"
    assert DEFAULT.redact(text) == f"order 12 card {CARD} expires 12 27"
    assert DEFAULT.redact("4111 1111 1111 1111 1111") == f"{CARD} 1111"


def test_a_spoken_card_number_is_redacted_and_the_words_around_it_kept():
    spoken = "four one one one one one one one one one one one one one one one"
    assert DEFAULT.redact(f"yes it is {spoken} okay") == f"yes it is {CARD} okay"
    assert DEFAULT.redact(f"It's {spoken.title()}.") == f"It's {CARD}."
    commas = ", ".join(spoken.split())
    assert DEFAULT.redact(f"sure, {commas}.") == f"sure, {CARD}."


def test_spoken_digits_with_oh_double_triple_and_mixed_digits():
    # 6011 1111 1111 1117 and 4111 1111 1111 1111 spoken as ASR writes them
    assert DEFAULT.redact("six oh double one 1111 1111 triple one seven") == CARD
    assert DEFAULT.redact("four one double one 1111 1111 1111") == CARD
    spoken = "four one one one one one one one one one one one one one one one"
    assert DEFAULT.redact(f"Oh, {spoken}.") == f"Oh, {CARD}."  # "oh" before it is no zero
    assert DEFAULT.redact("five five zero zero zero zero zero zero zero zero zero zero zero zero zero four") == CARD  # fmt: skip  # noqa: E501


def test_spoken_numbers_that_are_not_cards_are_kept():
    for text in [
        "four one one one one one one one one one one one one one one two",  # fails Luhn
        "one moment, I have two accounts and one of them is closed",
        "my number is one two three four five six seven eight",  # 8 digits
        "someone phoned",
        "one two three four five six seven eight nine one two three four five six seven",
    ]:
        assert DEFAULT.redact(text) == text


@pytest.mark.parametrize(
    "iban",
    [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "gb82 west 1234 5698 7654 32",  # any case
        "NL91ABNA0417164300",
        "BE68539007547034",
    ],
)
def test_valid_ibans_are_redacted(iban):
    assert DEFAULT.redact(f"pay to {iban} today") == f"pay to {IBAN} today"


@pytest.mark.parametrize(
    "text",
    [
        "DE88 3704 0044 0532 0130 00",  # wrong check digits
        "GB82WEST1234569876543",  # one character short for GB
        "DE89 3704 0044 0532 0130 001",  # runs past DE's 22 characters
        "XX12 3456 7890 1234 5678",  # not a country with IBANs
        "reference AB12CDEF34567890",
    ],
)
def test_invalid_ibans_are_kept(text):
    assert DEFAULT.redact(text) == text


def test_an_iban_ends_at_its_country_length_and_after_a_rejected_candidate():
    assert DEFAULT.redact("NL91ABNA0417164300 THEN") == f"{IBAN} THEN"
    assert DEFAULT.redact("XX12 DE89 3704 0044 0532 0130 00") == f"XX12 {IBAN}"


@pytest.mark.parametrize(
    "identifier",
    [
        "123-45-6789",  # US SSN
        "123 45 6789",
        "AB 12 34 56 C",  # UK NINO
        "ab123456c",
        "12345678Z",  # Spanish DNI
        "12345678-Z",
        "X1234567L",  # Spanish NIE
        "1 85 05 78 006 084 91",  # French NIR
        "185057800608491",
        "1 85 05 2A 006 084 35",  # French NIR, born in Corsica
        "RSSMRA85T10A562S",  # Italian codice fiscale
        "rssmra85t10a562s",
    ],
)
def test_valid_national_ids_are_redacted(identifier):
    assert DEFAULT.redact(f"id {identifier} ok") == f"id {NATIONAL_ID} ok"


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",  # SSN area 000
        "666-12-3456",
        "912-34-5678",  # 9xx: never an SSN
        "123-00-4567",
        "123-45-0000",
        "123-45 6789",  # mixed separators
        "QQ123456C",  # invalid NINO prefix
        "GB123456A",
        "AO123456A",  # O as second letter
        "AB123456E",  # suffix beyond D
        "12345678A",  # DNI with the wrong letter
        "X1234567A",
        "1 85 05 78 006 084 92",  # NIR with the wrong key
        "1 85 05 2B 006 084 35",  # the Corsica key of 2A does not fit 2B
        "185137800608491",  # month 13
        "RSSMRA85T10A562T",  # codice fiscale with the wrong check character
        "RSSMRA85T99A562S",  # day 99
    ],
)
def test_invalid_national_ids_are_kept(text):
    assert DEFAULT.redact(text) == text


def test_email_is_redacted_only_when_enabled():
    text = "write to john.doe+bank@example.co.uk please"
    assert DEFAULT.redact(text) == text
    assert Redactor(["email"]).redact(text) == "write to [redacted:email] please"
    assert Redactor(["email"]).redact("at noon @ the branch") == "at noon @ the branch"


def test_phone_is_redacted_only_when_enabled():
    phone = Redactor(["phone"])
    for number in ["+44 20 7946 0958", "+33612345678", "020 7946 0958", "(555) 123-4567"]:
        text = f"call {number} now"
        assert DEFAULT.redact(text) == text
        assert phone.redact(text) == "call [redacted:phone] now"
    for text in ["account 12345678", "+44 123", "at 10 30", "123456789012"]:
        assert phone.redact(text) == text


def test_custom_patterns_are_redacted_and_overlaps_become_one_placeholder():
    redactor = Redactor(patterns=[r"\bPOL-\d{8}\b", r"card \d{4}"])
    assert redactor.redact("policy POL-12345678 renewed") == "policy [redacted] renewed"
    assert redactor.redact("card 4111 1111 1111 1111 ok") == "[redacted] ok"
    assert Redactor([], patterns=["x*"]).redact("abc") == "abc"  # empty matches are ignored


def test_several_matches_in_one_text():
    text = "card 4111111111111111, iban GB82WEST12345698765432, ssn 123-45-6789."
    assert DEFAULT.redact(text) == f"card {CARD}, iban {IBAN}, ssn {NATIONAL_ID}."


def test_text_without_pii_is_returned_as_is():
    text = "I would like to check my balance please"
    assert ALL.redact(text) is text
    assert ALL.redact("") == ""
    assert Redactor([]).redact("4111 1111 1111 1111") == "4111 1111 1111 1111"


def test_unknown_rules_and_invalid_patterns_are_refused():
    with pytest.raises(ValueError, match=r"'cards'.*known: card, email, iban, national_id, phone"):
        Redactor(["cards"])
    with pytest.raises(ValueError, match="invalid regular expression"):
        Redactor(patterns=["(unclosed"])


def test_from_config():
    redactor = Redactor.from_config(PrivacyConfig(redact=("email",), patterns=(r"\bPOL-\d+",)))
    assert redactor.rules == ("email",)
    assert redactor.redact("a@b.com POL-1 4111111111111111") == (
        "[redacted:email] [redacted] 4111111111111111"
    )
    assert Redactor.from_config(PrivacyConfig()).rules == ("card", "iban", "national_id")


def turn(**changes: object) -> TurnCompleted:
    values: dict = dict(
        call_id="c1",
        index=0,
        step="ask_card",
        prompt="Please say your card number.",
        transcript="it is 4111 1111 1111 1111",
        confidence=0.9,
        engine="vosk",
        grammar=None,
        speech_end_at=1.0,
        asr_final_at=1.2,
        first_audio_at=1.5,
        fallbacks=("asr whisper: timed out on 4111111111111111", "asr openai: down"),
    )
    values.update(changes)
    return TurnCompleted(**values)


def test_redact_event_turn_completed():
    event = turn(prompt="I heard 4111 1111 1111 1111, is that right?")
    redacted = DEFAULT.redact_event(event)
    assert redacted is not event
    assert redacted.transcript == f"it is {CARD}"
    assert redacted.prompt == f"I heard {CARD}, is that right?"
    assert redacted.fallbacks == (f"asr whisper: timed out on {CARD}", "asr openai: down")
    unchanged = ("prompt", "transcript", "fallbacks")
    for f in dataclasses.fields(TurnCompleted):
        if f.name not in unchanged:
            assert getattr(redacted, f.name) == getattr(event, f.name)
    clean = turn(transcript="yes", fallbacks=())
    assert DEFAULT.redact_event(clean) is clean


def test_redact_event_variable_set_and_step_result():
    variable = VariableSet("c1", "ask", "iban", "DE89 3704 0044 0532 0130 00", 2.0)
    assert DEFAULT.redact_event(variable) == dataclasses.replace(variable, value=IBAN)
    kept = VariableSet("c1", "ask", "account", "12345678", 2.0)
    assert DEFAULT.redact_event(kept) is kept
    step = StepResult("c1", "lookup", "webhook", False, "HTTP 400: bad ssn 123-45-6789", 3.0)
    assert DEFAULT.redact_event(step) == dataclasses.replace(
        step, detail=f"HTTP 400: bad ssn {NATIONAL_ID}"
    )
    ok = StepResult("c1", "lookup", "webhook", True, "", 3.0)
    assert DEFAULT.redact_event(ok) is ok


def test_redact_event_leaves_the_cdr_and_other_events_alone():
    events = [
        CallStarted(
            "c1",
            "sip:+441234567890@trunk",
            "sip:4111111111111111@switchboard",
            "4111111111111111",
            "bank",
            "PCMU",
            1.0,
            1.1,
        ),
        StepEntered("c1", "ask_card", 1.2),
        DialogStarted("c1", "bank", "ab" * 32, 1.2),
        CallEnded("c1", 9.0, "ANSWERED", "normal", "caller"),
    ]
    for event in events:
        assert ALL.redact_event(event) is event


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(text)
    return path


def test_config_rejects_unknown_rules_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[privacy]\nredact = ["cards"]\n'))
    message = str(info.value)
    assert message.startswith("privacy.redact:")
    assert "'cards'" in message and "card, email, iban, national_id, phone" in message


def test_config_rejects_an_invalid_pattern(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[privacy]\npatterns = ['POL-(\\d+']\n"))
    assert str(info.value).startswith("privacy.patterns: invalid regular expression")


def test_config_privacy_section_builds_a_redactor(tmp_path):
    path = write(tmp_path, '[privacy]\nredact = ["card", "email"]\npatterns = [\'POL-\\d+\']\n')
    redactor = Redactor.from_config(load_config(path).privacy)
    assert redactor.rules == ("card", "email") and redactor.patterns == (r"POL-\d+",)
