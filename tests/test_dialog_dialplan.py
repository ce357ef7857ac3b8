"""Dialplan loading: the demo loads, and every mistake is reported at file:line:column."""
# ruff: noqa: E501 - the expected errors are quoted whole, as the validator prints them

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.cli import main
from app.dialog.dialplan import TOP_KEYS, DialplanError, load_dialplan, load_dialplans
from app.dialog.parsing import STEP_KINDS
from app.dialog.runner import DialogRunner
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


EXAMPLES = sorted((REPO_ROOT / "dialplans").glob("*.yaml"))
BROKEN = Path(__file__).resolve().parent / "dialplans" / "broken"
SCHEMA = json.loads((REPO_ROOT / "app" / "dialog" / "dialplan.schema.json").read_text())

BROKEN_DIALPLANS: dict[str, list[str]] = {
    "bad_values.yaml": [
        "5:11: step 'ask': type: 'numbr' is not one of choice, date, digits, number, text, time, yes_no (did you mean 'number'?)",
        "6:12: step 'ask': input: 'keypad' is not one of both, dtmf, speech",
        "7:14: step 'ask': retries: must be 0..10",
        "10:14: step 'hook': webhook: expected an http(s) URL",
        "11:13: step 'hook': method: one of GET, POST, PUT, PATCH, DELETE",
        "12:17: step 'hook': timeout_ms: must be 100..60000",
        "16:13: step 'bye': write 'hangup: true'",
    ],
    "branch_and_llm.yaml": [
        "4:5: step 'b': missing 'else': the step when no rule matches",
        "5:13: step 'b': branch: rule 1: a condition needs exactly one test of: set, equals, not_equals, in, not_in, lt, le, gt, ge, matches",
        "5:27: step 'b': branch: rule 1: unknown key 'bigger' in a condition",
        "7:36: step 'b': branch: rule 2: matches: bad regular expression: missing ), unterminated subpattern at position 0",
        "9:9: step 'b': branch: rule 3: missing 'if': a condition or a list of them",
        "11:5: step 'l': missing 'url': the API base, e.g. http://llm:8000/v1",
    ],
    "loop_without_input.yaml": [
        "3:3: steps a -> b -> c -> a loop without waiting for the caller (add an ask, menu or record step)",
    ],
    "menu_conflicts.yaml": [
        "10:7: step 'menu': options: billing: key '0' is the global agent key; pick another key",
        "11:16: step 'menu': options: support: saying 'one' already chooses 'sales'",
        "11:23: step 'menu': options: support: key '1' is taken by 'sales'",
        "12:16: step 'menu': options: billing: saying 'sales' already chooses 'sales'",
        "14:15: step 'agent': transfer: expected a SIP URI like sip:agent@pbx.example.com",
    ],
    "not_a_mapping.yaml": [
        "1:1: a dialplan must be a mapping, got a list",
    ],
    "undefined_variable.yaml": [
        "9:10: step 'read_back': say: unknown variable 'acount' (did you mean 'account'?) (known: account, call_id, caller, dialled)",
        "13:7: step 'check': branch rule 1: unknown variable 'balanse' (known: account, call_id, caller, dialled)",
    ],
    "unknown_step.yaml": [
        "5:11: step 'greet': next: unknown step 'ask_acount' (did you mean 'ask_account'?)",
        "10:14: step 'ask_account': on_fail: unknown step 'goodby' (did you mean 'goodbye'?)",
    ],
    "unreachable.yaml": [
        "6:3: step 'orphan' can never be reached: no step leads to it from 'start'",
    ],
    "yaml_syntax.yaml": [
        "5:1: found unexpected end of stream (while scanning a quoted scalar started at line 4, column 10)",
    ],
}
"""Each broken dialplan under tests/dialplans/broken and exactly the errors it must give."""


def test_demo_loads():
    plan = load_dialplan(DEMO)
    assert plan.name == "demo"
    assert plan.start == "greet"
    assert plan.version == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert plan.description.startswith("Demo bank line")
    ask = plan.steps["ask_account"]
    assert isinstance(ask, AskStep)
    assert (ask.slot_type, ask.grammar, ask.into) == ("digits", "digits", "account")
    assert (ask.min_length, ask.max_length) == (4, 12)
    assert (ask.retries.count, ask.retries.on_fail, ask.next) == (2, "goodbye", "confirm")
    assert ask.collect.speech and ask.collect.dtmf and ask.collect.dtmf_max_digits == 12
    assert isinstance(plan.steps["greet"], SayStep)
    assert isinstance(plan.steps["end"], HangupStep)
    assert load_dialplans(DEMO.parent)["demo"] == plan


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_and_match_the_schema(path):
    load_dialplan(path)
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)


def test_the_broken_collection_is_complete():
    assert sorted(p.name for p in BROKEN.glob("*.yaml")) == sorted(BROKEN_DIALPLANS)


@pytest.mark.parametrize("name", sorted(BROKEN_DIALPLANS))
def test_broken_dialplan_gives_exactly_its_errors(name):
    path = BROKEN / name
    assert errors_of(path) == [f"{path}:{error}" for error in BROKEN_DIALPLANS[name]]


def test_validate_command_prints_errors_and_fails(capsys):
    assert main(["dialplan", "validate", str(BROKEN / "unreachable.yaml"), str(DEMO)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{BROKEN / 'unreachable.yaml'}:{BROKEN_DIALPLANS['unreachable.yaml'][0]}",
                   f"OK {DEMO}"]  # fmt: skip


def test_schema_knows_exactly_the_keys_the_loader_knows():
    """The schema (for editors) and the loader (for the server) must accept the same keys."""
    defs = SCHEMA["$defs"]
    for kind, (allowed, _parser) in STEP_KINDS.items():
        assert set(defs[f"{kind}Step"]["properties"]) == {kind, *allowed}, kind
    assert set(SCHEMA["properties"]) == set(TOP_KEYS)


@pytest.mark.parametrize(
    "name", ["bad_values.yaml", "menu_conflicts.yaml", "branch_and_llm.yaml", "not_a_mapping.yaml"]
)
def test_schema_rejects_the_structurally_broken(name):
    document = yaml.safe_load((BROKEN / name).read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


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
        (16, 5, "step 'typo': needs one of 'say', 'ask', 'menu', 'branch', 'set', 'webhook'"),
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
        ("start: a\nsteps: []\n", "2:8", "steps: expected a mapping, got a list"),
        ("start: b\nsteps:\n  a:\n    hangup: true\n", "1:8", "start: unknown step 'b'"),
        (
            "start: a\nstep:\n  a: 1\n",
            "2:1",
            "unknown key 'step' at the top level (did you mean 'steps'?)",
        ),
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
            "max_digits needs 'type: digits'",
        ),
        (
            "start: a\nsteps:\n  a:\n    ask: Ok?\n    into: caller\n",
            "5:11",
            "'caller' is set by the call",
        ),
        ("start: a\nsteps:\n  a:\n    ask: Ok?\n    phrases: [yes, []]\n", "5:20", "got a list []"),
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
    first = next(DialogRunner(load_dialplan(path)).run())
    assert first.options.phrases == ("yes", "No", "not sure")


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
