"""Dialplan loading: the demo loads, and every mistake is reported at file:line:column."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from app.dialog.dialplan import DialplanError, load_dialplan, load_dialplans
from app.dialog.steps import AskStep, HangupStep, SayStep

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "dialplans" / "demo.yaml"


def write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(DialplanError) as info:
        load_dialplan(path)
    return info.value.errors


def test_demo_loads():
    plan = load_dialplan(DEMO)
    assert plan.name == "demo"
    assert plan.start == "greet"
    assert plan.version == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert plan.description.startswith("Demo bank line")
    ask = plan.steps["ask_account"]
    assert isinstance(ask, AskStep)
    assert (ask.grammar, ask.into, ask.min_digits, ask.max_digits) == ("digits", "account", 4, 12)
    assert (ask.retries, ask.on_fail, ask.next) == (2, "goodbye", "confirm")
    assert isinstance(plan.steps["greet"], SayStep)
    assert isinstance(plan.steps["end"], HangupStep)
    assert load_dialplans(DEMO.parent)["demo"] == plan


def test_each_error_has_its_own_line_and_column(tmp_path):
    path = write(
        tmp_path,
        """
        description: broken on purpose
        start: greet
        steps:
          greet:
            say: "Hello {acount}"
            nxt: ask
          ask:
            ask: "Your number?"
            grammar: digit
            into: account
            on_fail: nowhere
          both:
            say: "hi"
            hangup: true
          typo:
            sya: "hello"
          limits:
            ask: "Digits?"
            grammar: digits
            min_digits: 6
            max_digits: 4
          bad_filter:
            say: "{account | upper}"
          end:
            hangup: true
            next: greet
        """,
    )
    found = errors_of(path)
    expected = [
        (5, 10, "step 'greet': say: unknown variable 'acount' (did you mean 'account'?)"),
        (6, 5, "step 'greet': unknown key 'nxt' for a 'say' step (did you mean 'next'?)"),
        (9, 14, "step 'ask': unknown grammar 'digit' (did you mean 'digits'?)"),
        (11, 14, "step 'ask': on_fail: unknown step 'nowhere'"),
        (14, 5, "step 'both': has both 'say' and 'hangup'"),
        (16, 5, "step 'typo': needs one of 'say', 'ask', 'hangup' (did you mean 'say'?)"),
        (20, 17, "step 'limits': min_digits (6) is more than max_digits (4)"),
        (23, 10, "step 'bad_filter': say: unknown filter 'upper'"),
        (26, 5, "step 'end': unknown key 'next' for a 'hangup' step"),
    ]
    assert len(found) == len(expected), found
    for error, (line, column, message) in zip(found, expected, strict=True):
        assert error.startswith(f"{path}:{line}:{column}: "), error
        assert message in error


def test_yaml_syntax_error_location(tmp_path):
    path = write(tmp_path, 'start: a\nsteps:\n  a:\n    say: "unclosed\n')
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:5:1: ")
    assert "while scanning a quoted scalar started at line 4" in error


def test_plain_scalar_with_colon_is_a_syntax_error_with_its_line(tmp_path):
    path = write(tmp_path, "description: Demo: reads back\nstart: a\nsteps: {a: {hangup: true}}\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:1:18: mapping values are not allowed here")


@pytest.mark.parametrize(
    ("text", "location", "message"),
    [
        ("- a\n- b\n", "1:1", "a dialplan must be a mapping, got a list"),
        ("", "1:1", "a dialplan must be a mapping, got nothing"),
        ("steps:\n  a:\n    hangup: true\n", "1:1", "missing 'start'"),
        ("start: a\n", "1:1", "missing 'steps'"),
        ("start: a\nsteps: []\n", "2:8", "'steps' must be a mapping"),
        ("start: b\nsteps:\n  a:\n    hangup: true\n", "1:8", "start: unknown step 'b'"),
        ("start: a\nstep:\n  a: 1\n", "2:1", "unknown key 'step' (did you mean 'steps'?)"),
        (
            "start: a\nsteps:\n  a:\n    say: hi\n  a:\n    hangup: true\n",
            "5:3",
            "duplicate key 'a'",
        ),
        ("start: a\nsteps:\n  a:\n    say: 'x {{ {b'\n", "4:10", "unclosed '{'"),
        ("start: a\nsteps:\n  a:\n    hangup: yes\n", "4:13", "write 'hangup: true'"),
        (
            "start: a\nsteps:\n  a:\n    ask: Number?\n    min_digits: 0\n    grammar: digits\n",
            "5:17",
            "min_digits: must be 1..64",
        ),
        (
            "start: a\nsteps:\n  a:\n    ask: Ok?\n    grammar: yes_no\n    max_digits: 3\n",
            "6:5",
            "max_digits needs 'grammar: digits'",
        ),
        (
            "start: a\nsteps:\n  a:\n    ask: Ok?\n    into: caller\n",
            "5:11",
            "'caller' is set by the call",
        ),
        ("start: a\nsteps:\n  a:\n    ask: Ok?\n    phrases: [yes, 3]\n", "5:20", "got a number 3"),
        ("start: a\nsteps:\n  a:\n    say: 42\n", "4:10", "say: expected text, got a number 42"),
    ],
)
def test_single_errors(tmp_path, text, location, message):
    path = write(tmp_path, text)
    found = errors_of(path)
    assert any(e.startswith(f"{path}:{location}: ") and message in e for e in found), found


def test_yes_and_no_stay_text_in_phrases(tmp_path):
    path = write(
        tmp_path,
        "start: a\nsteps:\n  a:\n    ask: Ok?\n    phrases: [yes, No, 'not sure']\n    into: ok\n",
    )
    step = load_dialplan(path).steps["a"]
    assert isinstance(step, AskStep)
    assert step.phrases == ("yes", "No", "not sure")
    assert step.recognition_options().phrases == ("yes", "No", "not sure")


def test_folder_errors_are_collected_across_files(tmp_path):
    write(tmp_path, "start: a\nsteps:\n  a:\n    hangup: true\n", "good.yaml")
    write(tmp_path, "start: a\n", "bad1.yaml")
    write(tmp_path, "start: [\n", "bad2.yaml")
    with pytest.raises(DialplanError) as info:
        load_dialplans(tmp_path)
    assert [Path(e.split(":")[0]).name for e in info.value.errors] == ["bad1.yaml", "bad2.yaml"]


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DialplanError, match="dialplan folder not found"):
        load_dialplans(tmp_path / "none")
    with pytest.raises(DialplanError, match="file not found"):
        load_dialplan(tmp_path / "none.yaml")
