"""The dialogue engine driven with scripted recogniser results, no audio and no threads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from app.asr.base import AsrResult, RecognitionOptions
from app.dialog.actions import Action, Ask, Hangup, Say
from app.dialog.dialplan import load_dialplan
from app.dialog.runner import DialogRunner
from app.dialog.template import TemplateError, parse_template

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "dialplans" / "demo.yaml"
CALL = {"caller": "sip:alice@example.com", "dialled": "1000"}


def heard(text: str) -> AsrResult:
    return AsrResult(text=text, confidence=0.9, is_final=True, engine="script")


def converse(runner: DialogRunner, answers: list[AsrResult | None]) -> list[Action]:
    """Play the dialogue: None after each Say, the next scripted answer after each Ask."""
    dialogue = runner.run()
    actions = [next(dialogue)]
    pending = list(answers)
    while not isinstance(actions[-1], Hangup):
        reply = pending.pop(0) if isinstance(actions[-1], Ask) else None
        actions.append(dialogue.send(reply))
    with pytest.raises(StopIteration):
        dialogue.send(None)
    assert not pending, "script had answers left over"
    return actions


def test_demo_happy_path():
    runner = DialogRunner(load_dialplan(DEMO), CALL)
    actions = converse(runner, [heard("one two three four oh")])
    assert actions == [
        Say("greet", "Welcome to the Switchboard demo."),
        Ask(
            "ask_account",
            "Please say your account number, one digit at a time.",
            RecognitionOptions(grammar="digits"),
            None,
            1,
        ),
        Say("confirm", "You said 1 2 3 4 0. Thank you."),
        Say("goodbye", "Goodbye."),
        Hangup("end", "hangup step"),
    ]
    assert runner.variables == {**CALL, "account": "12340"}
    assert runner.current_step == "end"


def test_no_input_then_success_uses_the_reprompt():
    runner = DialogRunner(load_dialplan(DEMO), CALL)
    actions = converse(runner, [None, heard("nine eight seven six five")])
    asks = [a for a in actions if isinstance(a, Ask)]
    assert [a.attempt for a in asks] == [1, 2]
    assert asks[1].prompt == "Sorry, I did not catch that. Please say your account number."
    assert Say("confirm", "You said 9 8 7 6 5. Thank you.") in actions
    assert runner.variables["account"] == "98765"


def test_too_few_digits_three_times_goes_to_on_fail():
    runner = DialogRunner(load_dialplan(DEMO), CALL)
    actions = converse(runner, [heard("one two"), heard("three"), heard("")])
    assert [a.step for a in actions] == [
        "greet",
        "ask_account",
        "ask_account",
        "ask_account",
        "goodbye",
        "end",
    ]
    assert "account" not in runner.variables
    assert actions[-2] == Say("goodbye", "Goodbye.")


def write_plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_phrases_yes_no_templates_and_end_without_next(tmp_path):
    plan = load_dialplan(
        write_plan(
            tmp_path,
            """
            start: colour
            steps:
              colour:
                ask: "Hello {caller}, you dialled {dialled | digits}. Red or green?"
                phrases: [red, Dark Green]
                into: colour
                retries: 1
                next: sure
              sure:
                ask: "You chose {colour}. Is that right?"
                grammar: yes_no
                into: confirmed
                no_input_ms: 3000
                next: done
              done:
                say: "Noted {colour}: {confirmed}. {{braces}} stay."
            """,
        )
    )
    runner = DialogRunner(plan, CALL)
    actions = converse(runner, [heard("blue"), heard("dark  green"), heard("yes please")])
    assert actions[0].prompt == ("Hello sip:alice@example.com, you dialled 1 0 0 0. Red or green?")
    assert actions[0].options == RecognitionOptions(phrases=("red", "Dark Green"))
    assert actions[2] == Ask(
        "sure",
        "You chose Dark Green. Is that right?",
        RecognitionOptions(grammar="yes_no"),
        3000,
        1,
    )
    assert actions[3] == Say("done", "Noted Dark Green: yes. {braces} stay.")
    assert actions[4] == Hangup("done", "no next step")


def test_retries_exhausted_without_on_fail_hangs_up(tmp_path):
    plan = load_dialplan(
        write_plan(
            tmp_path,
            """
            start: ask
            steps:
              ask:
                ask: "Yes or no?"
                grammar: yes_no
                retries: 0
                next: ask
            """,
        )
    )
    actions = converse(DialogRunner(plan, CALL), [heard("maybe")])
    assert actions[-1] == Hangup("ask", "retries exhausted")


def test_a_loop_of_say_steps_is_cut_off(tmp_path):
    plan = load_dialplan(
        write_plan(
            tmp_path,
            """
            start: a
            steps:
              a: {say: "A", next: b}
              b: {say: "B", next: a}
            """,
        )
    )
    actions = converse(DialogRunner(plan, CALL, max_steps=10), [])
    assert len(actions) == 11
    assert actions[-1].reason == "step limit (10) reached"


def test_wrong_reply_type_is_an_error():
    dialogue = DialogRunner(load_dialplan(DEMO), CALL).run()
    next(dialogue)
    ask = dialogue.send(None)
    assert isinstance(ask, Ask)
    with pytest.raises(TypeError, match="AsrResult or None"):
        dialogue.send("one two three four")


def test_template_filters_and_escapes():
    template = parse_template("Card {card|digits}, ref {ref}, {{literal}}")
    assert template.variables == ("card", "ref")
    assert template.render({"card": "12 34", "ref": "A7"}) == "Card 1 2 3 4, ref A7, {literal}"
    assert template.render({}) == "Card , ref , {literal}"
    for bad in ("{x", "x}", "{1x}", "{x | shout}", "{}"):
        with pytest.raises(TemplateError):
            parse_template(bad)
