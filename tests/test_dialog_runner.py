"""The dialogue engine driven with scripted replies: no audio, no threads, no network.

Each test is a conversation: the script answers every action that needs an answer (speech,
keys, a webhook response, a chat reply, a transfer outcome, a recording) and the test checks
what the bot said and did, the variables and the outcomes reported for the call record.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path
from typing import Any

import pytest

from app.asr.base import AsrResult
from app.dialog.actions import (
    Action,
    Ask,
    AskLlm,
    CallTimeLimit,
    CallWebhook,
    DtmfInput,
    Hangup,
    Record,
    Recording,
    Say,
    StepOutcome,
    Transfer,
    TransferOutcome,
)
from app.dialog.dialplan import load_dialplan
from app.dialog.runner import REDACTED, DialogRunner
from app.services.llm import ChatMessage, ChatReply
from app.services.webhook import WebhookResponse

REPO_ROOT = Path(__file__).resolve().parent.parent
DIALPLANS = REPO_ROOT / "dialplans"
CALL = {"caller": "sip:alice@example.com", "dialled": "1000"}
TODAY = dt.date(2026, 11, 21)  # a Saturday


def said(text: str) -> AsrResult:
    return AsrResult(text=text, confidence=0.9, is_final=True, engine="script")


def keys(digits: str, terminated: bool = False) -> DtmfInput:
    return DtmfInput(digits, terminated)


class Conversation:
    """Runs a dialplan against a script of replies; records everything for assertions."""

    def __init__(self, plan_path: Path, **variables: str) -> None:
        self.variables_set: list[tuple[str, str, str]] = []
        self.outcomes: list[StepOutcome] = []
        self.runner = DialogRunner(
            load_dialplan(plan_path),
            {**CALL, **variables},
            today=TODAY,
            environ={"TEST_LLM_KEY": "sekret"},
            on_variable=lambda step, name, value: self.variables_set.append((step, name, value)),
            on_outcome=self.outcomes.append,
        )
        self.actions: list[Action] = []

    def run(self, script: list[Any], *, throw_at: tuple[int, ...] = ()) -> list[Action]:
        """Send the script's next item after every action that needs a reply (None after Say).
        `throw_at`: throw CallTimeLimit instead of replying to the actions with these indexes."""
        dialogue = self.runner.run()
        action = next(dialogue)
        pending = list(script)
        while True:
            self.actions.append(action)
            if isinstance(action, Hangup):
                break
            if len(self.actions) - 1 in throw_at:
                action = dialogue.throw(CallTimeLimit())
                continue
            reply = None if isinstance(action, Say) else pending.pop(0)
            action = dialogue.send(reply)
        with pytest.raises(StopIteration):
            dialogue.send(None)
        assert not pending, f"script had answers left over: {pending}"
        return self.actions

    def spoken(self) -> list[str]:
        out = []
        for action in self.actions:
            if isinstance(action, Say):
                out.append(action.text)
            elif isinstance(action, Ask | Record | Transfer) and action.prompt:
                out.append(action.prompt)
        return out

    def steps(self) -> list[str]:
        return list(dict.fromkeys(a.step for a in self.actions))


def plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def ok(data: Any, status: int = 200) -> WebhookResponse:
    return WebhookResponse(ok=True, status=status, data=data)


# -- asking -----------------------------------------------------------------------------------


def test_demo_happy_path():
    talk = Conversation(DIALPLANS / "demo.yaml")
    actions = talk.run([said("one two three four oh")])
    assert talk.spoken() == [
        "Welcome to the Switchboard demo.",
        "Please say your account number, one digit at a time.",
        "You said 1 2 3 4 0. Thank you.",
        "Goodbye.",
    ]
    ask = actions[1]
    assert isinstance(ask, Ask)
    assert (ask.options.grammar, ask.speech, ask.dtmf.max_digits, ask.dtmf.terminator) == (
        "digits",
        True,
        12,
        "#",
    )
    assert actions[-1] == Hangup("end", "hangup step")
    assert talk.runner.variables["account"] == "12340"
    assert talk.variables_set == [("ask_account", "account", "12340")]


def test_keys_answer_a_digits_question():
    talk = Conversation(DIALPLANS / "demo.yaml")
    talk.run([keys("98765", terminated=True)])
    assert talk.runner.variables["account"] == "98765"


def test_distinct_reprompts_for_no_input_and_no_match(tmp_path):
    path = plan(
        tmp_path,
        """
        start: q
        steps:
          q:
            ask: "Your PIN?"
            type: digits
            min_digits: 4
            max_digits: 4
            retries: 3
            no_input: "I did not hear you."
            no_match: ["That was not four digits.", "Please use the keypad."]
            on_no_input: silent
            on_no_match: confused
            next: done
          silent: {say: "Silent caller.", next: done}
          confused: {say: "Confused caller.", next: done}
          done: {hangup: true}
        """,
    )
    talk = Conversation(path)
    talk.run([None, keys("12"), said("one two"), said("blah")])
    assert talk.spoken() == [
        "Your PIN?",
        "I did not hear you.",
        "That was not four digits.",
        "Please use the keypad.",
        "Confused caller.",
    ]
    talk = Conversation(path)
    talk.run([keys("1"), None, None, None])
    assert talk.spoken()[-1] == "Silent caller."


@pytest.mark.parametrize(
    ("answer", "stored"),
    [
        (said("yeah"), "yes"),
        (keys("2"), "no"),
        (said("maybe"), None),
    ],
)
def test_yes_no_by_voice_or_key(tmp_path, answer, stored):
    path = plan(
        tmp_path,
        """
        start: q
        steps:
          q: {ask: "Book it?", type: yes_no, into: ok, retries: 0, next: done}
          done: {hangup: true}
        """,
    )
    talk = Conversation(path)
    talk.run([answer])
    assert talk.runner.variables.get("ok") == stored


def test_slots_number_date_time_and_choice(tmp_path):
    path = plan(
        tmp_path,
        """
        start: n
        steps:
          n: {ask: "How many?", type: number, min: 1, max: 10, into: n, retries: 0, next: d}
          d: {ask: "Which day?", type: date, into: d, retries: 0, next: t}
          t: {ask: "What time?", type: time, into: t, retries: 0, next: c}
          c:
            ask: "Which colour?"
            type: choice
            choices:
              red: [crimson, scarlet]
              blue: {say: [navy], dtmf: "2"}
            into: c
            retries: 0
            next: done
          done: {hangup: true}
        """,
    )
    talk = Conversation(path)
    actions = talk.run(
        [said("seven"), keys("1225", terminated=True), said("half past ten"), said("navy")]
    )
    variables = talk.runner.variables
    assert (variables["n"], variables["d"], variables["t"], variables["c"]) == (
        "7",
        "2026-12-25",
        "10:30",
        "blue",
    )
    choice_ask = actions[3]
    assert isinstance(choice_ask, Ask)
    assert set(choice_ask.options.phrases) == {"red", "crimson", "scarlet", "blue", "navy"}
    talk = Conversation(path)
    talk.run([said("eleven")])
    assert "n" not in talk.runner.variables  # 11 > max 10, no retries: hung up
    assert talk.actions[-1].reason == "no match after 1 tries"


def test_menu_by_key_and_by_synonym(tmp_path):
    path = plan(
        tmp_path,
        """
        start: m
        steps:
          m:
            menu: "Press 1 for sales or 2 for support."
            into: dept
            options:
              sales: {dtmf: "1", say: [buy, "new order"], goto: s}
              support: {dtmf: "2", say: [help], goto: h}
          s: {say: "Sales.", next: done}
          h: {say: "Support.", next: done}
          done: {hangup: true}
        """,
    )
    for answer, department in [
        (keys("2"), "support"),
        (said("i want a new order please"), "sales"),
        (said("two"), "support"),
    ]:
        talk = Conversation(path)
        actions = talk.run([answer])
        assert talk.runner.variables["dept"] == department
        menu = actions[0]
        assert isinstance(menu, Ask)
        assert (menu.dtmf.max_digits, menu.dtmf.terminator) == (1, None)
        assert "one" in menu.options.phrases and "new order" in menu.options.phrases


def test_sensitive_answers_stay_out_of_records_and_the_llm(tmp_path):
    path = plan(
        tmp_path,
        """
        start: pin
        steps:
          pin:
            ask: "PIN?"
            type: digits
            input: dtmf
            sensitive: true
            into: pin
            next: chat
          chat:
            llm: "My PIN is {pin}"
            url: "http://llm.invalid/v1"
            model: m
            speak: false
            next: done
          done: {hangup: true}
        """,
    )
    talk = Conversation(path)
    actions = talk.run([keys("4321"), ChatReply(ok=True, text="Fine.")])
    assert talk.runner.variables["pin"] == "4321"  # the dialogue itself can use it
    assert talk.variables_set == [("pin", "pin", REDACTED)]
    assert talk.runner.redacted_variables()["pin"] == REDACTED
    ask, llm = actions[0], actions[1]
    assert isinstance(ask, Ask) and ask.sensitive and ask.speech is False
    assert isinstance(llm, AskLlm)
    assert "4321" not in repr(llm.request.messages)


# -- logic ------------------------------------------------------------------------------------


def test_branch_operators_and_set(tmp_path):
    path = plan(
        tmp_path,
        """
        start: init
        variables: {tier: gold, n: "0", nickname: ""}
        steps:
          init:
            set: {score: "{n}", label: "tier {tier}"}
            next: b
          b:
            branch:
              - if: {var: score, gt: 8}
                goto: high
              - if: [{var: tier, in: [gold, platinum]}, {var: score, ge: 5}]
                goto: vip
              - if: {var: label, matches: "tier s.*"}
                goto: silver
              - if: {var: nickname, set: false}
                goto: plain
            else: done
          high: {say: "high", next: done}
          vip: {say: "vip {label}", next: done}
          silver: {say: "silver", next: done}
          plain: {say: "plain", next: done}
          done: {hangup: true}
        """,
    )
    cases = [({"n": "9"}, "high"), ({"n": "5"}, "vip tier gold"), ({"n": "x"}, "plain")]
    for variables, expected in cases:
        talk = Conversation(path, **variables)
        talk.run([])
        assert talk.spoken() == [expected]
    talk = Conversation(path, n="1", tier="silver")
    talk.run([])
    assert talk.spoken() == ["silver"]


def test_a_runaway_loop_is_cut_off_by_the_step_limit(tmp_path):
    path = plan(
        tmp_path,
        """
        start: a
        steps:
          a: {ask: "Again?", into: x, retries: 0, next: a}
        """,
    )
    talk = Conversation(path)
    talk.runner.max_steps = 5
    talk.run([said("yes")] * 5)
    assert talk.actions[-1] == Hangup("a", "step limit (5) reached")


# -- the outside world ------------------------------------------------------------------------

WEBHOOK_PLAN = """
start: look
variables: {backend: "http://bank.test", account: ""}
steps:
  look:
    webhook: "{backend}/accounts/{account}?x=1"
    method: POST
    headers: {X-Call: "{call_id}"}
    body: {account: "{account}", nested: [{n: "{account}"}], fixed: 3}
    result: {balance: account.balance, first: items.0}
    on_error: down
    next: tell
  tell: {say: "Balance {balance}, first {first}.", next: done}
  down: {say: "Backend down.", next: done}
  done: {hangup: true}
"""


def test_webhook_request_and_result_mapping(tmp_path):
    talk = Conversation(plan(tmp_path, WEBHOOK_PLAN), account="12 34", call_id="c1")
    actions = talk.run([ok({"account": {"balance": 12.5}, "items": ["a", "b"]})])
    request = actions[0].request
    assert isinstance(actions[0], CallWebhook)
    assert request.url == "http://bank.test/accounts/12%2034?x=1"  # values are URL-quoted
    assert request.headers == {"X-Call": "c1"}
    assert request.body == {"account": "12 34", "nested": [{"n": "12 34"}], "fixed": 3}
    assert talk.spoken() == ["Balance 12.5, first a."]
    assert talk.outcomes == [StepOutcome("look", "webhook", True, "HTTP 200")]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (WebhookResponse(ok=False, status=500, error="HTTP 500"), "HTTP 500"),
        (WebhookResponse(ok=False, status=None, error="timed out after 5.0 s"), "timed out"),
        (ok({"account": {}}), "result: "),
    ],
)
def test_webhook_failure_takes_on_error_and_is_reported(tmp_path, response, error):
    talk = Conversation(plan(tmp_path, WEBHOOK_PLAN), account="1")
    talk.run([response])
    assert talk.spoken() == ["Backend down."]
    (outcome,) = talk.outcomes
    assert (outcome.step, outcome.kind, outcome.ok) == ("look", "webhook", False)
    assert outcome.detail.startswith("POST http://bank.test/accounts/1: ")  # no query string
    assert error in outcome.detail


LLM_PLAN = """
start: q
steps:
  q: {ask: "What is your question?", into: question, next: a}
  a:
    llm: "{question}"
    url: "http://llm.test/v1"
    model: helper
    system: "Be brief. Caller {caller}."
    api_key_env: TEST_LLM_KEY
    into: answer
    on_error: sorry
    next: more
  more: {ask: "Anything else?", into: question, retries: 0, next: a}
  sorry: {say: "I cannot answer now.", next: done}
  done: {hangup: true}
"""


def test_llm_gets_the_call_history_and_its_reply_is_spoken(tmp_path):
    talk = Conversation(plan(tmp_path, LLM_PLAN))
    actions = talk.run(
        [
            said("when do you open"),
            ChatReply(ok=True, text="At nine."),
            said("and close"),
            ChatReply(ok=False, error="timed out after 8.0 s"),
        ]
    )
    first = next(a for a in actions if isinstance(a, AskLlm))
    assert first.request.api_key == "sekret"
    assert first.request.messages == (
        ChatMessage("system", f"Be brief. Caller {CALL['caller']}."),
        ChatMessage("assistant", "What is your question?"),
        ChatMessage("user", "when do you open"),
    )
    second = [a for a in actions if isinstance(a, AskLlm)][1]
    assert second.request.messages[-3:] == (
        ChatMessage("assistant", "At nine."),
        ChatMessage("assistant", "Anything else?"),
        ChatMessage("user", "and close"),
    )
    assert talk.spoken() == [
        "What is your question?",
        "At nine.",
        "Anything else?",
        "I cannot answer now.",
    ]
    assert talk.runner.variables["answer"] == "At nine."
    assert [o.ok for o in talk.outcomes] == [True, False]
    assert talk.outcomes[1].detail == "timed out after 8.0 s"


TRANSFER_PLAN = """
start: t
variables: {agents: "sip:agents@pbx.test"}
steps:
  t:
    transfer: "{agents}"
    prompt: "Transferring you."
    fallback: none
    on_error: failed
  failed: {say: "No agent is free.", next: done}
  done: {hangup: true}
"""


def test_transfer_success_ends_the_dialogue(tmp_path):
    talk = Conversation(plan(tmp_path, TRANSFER_PLAN))
    actions = talk.run([TransferOutcome(ok=True, method="refer", status=200)])
    assert actions[0] == Transfer("t", "sip:agents@pbx.test", "Transferring you.", "none", 30.0)
    assert actions[-1] == Hangup("t", "transferred to sip:agents@pbx.test (refer)")
    assert talk.outcomes == [StepOutcome("t", "transfer", True, "sip:agents@pbx.test by refer")]


def test_transfer_failure_takes_on_error(tmp_path):
    talk = Conversation(plan(tmp_path, TRANSFER_PLAN))
    talk.run([TransferOutcome(ok=False, status=603, error="REFER rejected: 603 Decline")])
    assert talk.spoken() == ["Transferring you.", "No agent is free."]
    assert talk.outcomes[0].detail == "sip:agents@pbx.test: REFER rejected: 603 Decline"


def test_record_stores_the_file_path(tmp_path):
    path = plan(
        tmp_path,
        """
        start: r
        steps:
          r: {record: "Leave a message.", max_s: 30, silence_s: 2, into: message, next: done}
          done: {hangup: true}
        """,
    )
    talk = Conversation(path)
    actions = talk.run([Recording("/var/rec/c1/r-1.wav", 4200, "silence")])
    assert actions[0] == Record("r", "Leave a message.", "r-1.wav", max_ms=30_000, silence_ms=2000)
    assert talk.runner.variables["message"] == "/var/rec/c1/r-1.wav"
    assert talk.outcomes[0].ok


# -- global handlers --------------------------------------------------------------------------


def test_agent_key_and_phrase_jump_to_the_handler():
    for answer in (keys("0"), said("operator please")):
        talk = Conversation(DIALPLANS / "bank.yaml")
        actions = talk.run([answer, TransferOutcome(ok=True, method="refer")])
        assert talk.steps() == ["greet", "ask_account", "to_agent"]
        assert isinstance(actions[-1], Hangup)
        assert talk.outcomes[0].kind == "agent"
    ask = Conversation(DIALPLANS / "bank.yaml")
    ask.run([keys("0"), TransferOutcome(ok=True, method="refer")])
    question = ask.actions[1]
    assert isinstance(question, Ask)
    assert question.options.extra_phrases == ("agent", "operator", "representative")


def test_time_limit_runs_its_handler_once_then_hangs_up():
    talk = Conversation(DIALPLANS / "bank.yaml")
    actions = talk.run([], throw_at=(1,))  # during the account question
    assert talk.steps() == ["greet", "ask_account", "too_long", "goodbye", "end"]
    assert actions[-1] == Hangup("end", "hangup step")
    talk = Conversation(DIALPLANS / "bank.yaml")
    actions = talk.run([], throw_at=(1, 2))  # and again during the time-limit announcement
    assert actions[-1] == Hangup("too_long", "maximum call duration reached")


def test_wrong_reply_type_is_an_error():
    dialogue = DialogRunner(load_dialplan(DIALPLANS / "demo.yaml"), CALL).run()
    assert isinstance(next(dialogue), Say)
    assert isinstance(dialogue.send(None), Ask)
    with pytest.raises(TypeError, match="Ask expects"):
        dialogue.send("one two three four")


def test_language_hotwords_and_initial_prompt_reach_the_recogniser(tmp_path):
    path = plan(
        tmp_path,
        """
        language: de-DE
        voice: de
        start: model
        steps:
          model:
            ask: Welches Modell haben Sie?
            hotwords: [Zyxel, FritzBox]
            initial_prompt: Router Zyxel VMG, FritzBox 7590.
            into: model
            next: end
          end:
            hangup: true
        """,
    )
    talk = Conversation(path)
    actions = talk.run([said("FritzBox")])
    options = next(a for a in actions if isinstance(a, Ask)).options
    assert options.language == "de-DE"
    assert options.hotwords == ("Zyxel", "FritzBox")
    assert options.initial_prompt == "Router Zyxel VMG, FritzBox 7590."
    assert talk.runner.dialplan.voice == "de"
