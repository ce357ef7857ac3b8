"""The call core performing the new dialplan actions with real engines and real HTTP, no SIP.

Keys arrive through `CallSession.push_dtmf` as the SIP adapter delivers them; webhooks go to a
local HTTP server; recordings are real WAV files of the caller's FSDD speech.
"""

from __future__ import annotations

import textwrap
import threading
import time
import wave
from pathlib import Path

import pytest

from app.asr.pocketsphinx import PocketSphinxEngine
from app.call.events import EventBus, StepEntered, StepResult, VariableSet
from app.call.session import CallServices, CallSession, SessionConfig
from app.dialog.actions import TransferOutcome
from app.dialog.dialplan import Dialplan, load_dialplan
from app.services.llm import ChatClient
from app.services.webhook import WebhookClient
from app.tts.espeak import EspeakEngine
from tests.conftest import REPO_ROOT
from tests.http_backends import JsonBackend, Reply
from tests.sip.audio_match import find_reference
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.virtual_call import Collector, VirtualLine

SPEED = 3.0


@pytest.fixture(scope="module")
def asr() -> PocketSphinxEngine:
    return PocketSphinxEngine()


@pytest.fixture(scope="module")
def tts() -> EspeakEngine:
    return EspeakEngine()


def bank_plan(tmp_path: Path, backend: str) -> Dialplan:
    text = (REPO_ROOT / "dialplans" / "bank.yaml").read_text()
    path = tmp_path / "bank.yaml"
    path.write_text(text.replace('backend: "http://127.0.0.1:8080"', f'backend: "{backend}"'))
    return load_dialplan(path)


def make_session(asr, tts, plan, line, collector, tmp_path, services=None, no_input_ms=4000):
    return CallSession(
        call_id="call/1@x",
        dialplan=plan,
        asr=asr,
        tts=tts,
        bus=EventBus([collector]),
        config=SessionConfig(no_input_ms=no_input_ms, recordings_dir=tmp_path / "rec"),
        request_hangup=line.hangup,
        variables={"caller": "sip:test@example.org", "dialled": "2000"},
        services=services,
    )


def press_after(session: CallSession, keys: str, delay_s: float) -> threading.Thread:
    def press() -> None:
        time.sleep(delay_s)
        for key in keys:
            session.push_dtmf(key)

    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def test_keys_interrupt_the_greeting_and_answer_by_type_ahead(asr, tts, tmp_path):
    """Account, PIN and menu choice typed during the greeting: each question takes its keys,
    the webhook gets the PIN, the records never see it."""
    with JsonBackend() as backend:
        backend.route(
            "POST",
            "/accounts/12345/balance",
            Reply.json({"status": "ok", "balance": 42, "currency": "euros"}),
        )
        plan = bank_plan(tmp_path, backend.url)
        collector = Collector()
        line = VirtualLine([], speed=SPEED)
        webhooks = WebhookClient()
        session = make_session(
            asr, tts, plan, line, collector, tmp_path, CallServices(webhooks, ChatClient())
        )
        press_after(session, "12345#9876#", delay_s=0.5)
        press_when(collector, "anything_else", session, "4")
        line.run(session)
        webhooks.close()
        (request,) = backend.requests_to("/accounts/12345/balance")
    assert session.error is None
    assert request.json == {"account": "12345", "pin": "9876"}
    assert request.headers["x-request-id"] == "call/1@x"
    steps = [e.step for e in collector.of(StepEntered)]
    assert steps == [
        "greet", "ask_account", "ask_pin", "lookup", "check_status", "tell_balance",
        "anything_else", "goodbye", "end",
    ]  # fmt: skip
    stored = {e.name: e.value for e in collector.of(VariableSet)}
    assert stored["account"] == "12345" and stored["pin"] == "[redacted]"
    assert stored["balance"] == "42"
    results = collector.of(StepResult)
    assert [(r.kind, r.ok) for r in results if r.kind != "dtmf"] == [("webhook", True)]
    keys = [(r.step, r.detail) for r in results if r.kind == "dtmf"]
    assert keys == [("ask_account", "12345"), ("ask_pin", "[redacted]"), ("anything_else", "4")]
    balance_prompt = tts_pcm(tts, "Your balance is 42 euros.")
    assert find_reference(bytes(line.heard), balance_prompt).correlation > 0.8
    greeting_s = len(tts_pcm(tts, plan.steps["greet"].text.source)) / 16000
    entered = {e.step: e.at for e in collector.of(StepEntered)}
    # the first key cut the greeting short: the question began well before it could have ended
    assert entered["ask_account"] - entered["greet"] < 0.6 * greeting_s / SPEED


def press_when(collector: Collector, step: str, session: CallSession, keys: str) -> None:
    """Press `keys` once the dialogue has entered `step` (and its prompt has begun)."""

    def wait_then_press() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e.step == step for e in collector.of(StepEntered)):
                time.sleep(1.0)
                for key in keys:
                    session.push_dtmf(key)
                return
            time.sleep(0.05)

    threading.Thread(target=wait_then_press, daemon=True).start()


def tts_pcm(tts: EspeakEngine, text: str) -> bytes:
    from app.media.resample import resample

    return resample(b"".join(tts.synthesize(text)), tts.sample_rate, 8000)


def test_record_writes_the_callers_message(asr, tts, tmp_path, shared_data):
    path = tmp_path / "msg.yaml"
    path.write_text(
        textwrap.dedent(
            """
            start: r
            steps:
              r: {record: "Leave a message.", max_s: 20, silence_s: 1, into: message, next: bye}
              bye: {say: "Thanks.", next: end}
              end: {hangup: true}
            """
        )
    )
    speech = build_digit_utterance(shared_data, "jackson", "4711", seed=7)
    collector = Collector()
    line = VirtualLine([speech + silence(2000)], speed=SPEED)
    session = make_session(asr, tts, load_dialplan(path), line, collector, tmp_path)
    line.run(session)
    assert session.error is None
    message = Path(session.variables["message"])
    assert message.parent == tmp_path / "rec" / "call_1_x"  # the Call-ID made safe as a folder
    with wave.open(str(message)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        recorded = wav.readframes(wav.getnframes())
    seconds = len(recorded) / 16000
    assert len(speech) / 16000 < seconds < len(speech) / 16000 + 2.5
    assert find_reference(recorded, speech).correlation > 0.9
    (result,) = collector.of(StepResult)
    assert result.kind == "record" and result.ok and "ended by silence" in result.detail


def test_transfer_hands_the_call_over_and_does_not_hang_up(asr, tts, tmp_path):
    calls: list[tuple[str, str, float]] = []

    def transfer(target: str, fallback: str, timeout_s: float) -> TransferOutcome:
        calls.append((target, fallback, timeout_s))
        return TransferOutcome(ok=True, method="refer", status=200)

    plan = bank_plan(tmp_path, "http://127.0.0.1:9")
    collector = Collector()
    line = VirtualLine([], speed=SPEED, max_call_s=60)
    session = make_session(
        asr, tts, plan, line, collector, tmp_path, CallServices(transfer=transfer)
    )
    press_after(session, "0", delay_s=0.3)  # then the question's 3 s inter-digit wait
    line.run(session, caller_hangs_up_after_s=30)
    assert [e.step for e in collector.of(StepEntered)] == ["greet", "ask_account", "to_agent"]
    assert calls == [("sip:agents@127.0.0.1:5080", "bridge", 20.0)]
    assert session.transferred
    assert not line.bot_hung_up.is_set()  # after a transfer the SIP side owns the call
    kinds = [(r.kind, r.ok, r.detail) for r in collector.of(StepResult) if r.kind != "agent"]
    assert kinds[0] == ("dtmf", True, "0") and kinds[1][:2] == ("transfer", True)
    assert [r.kind for r in collector.of(StepResult)] == ["dtmf", "agent", "transfer"]


def test_maximum_call_duration_runs_its_handler(asr, tts, tmp_path):
    path = tmp_path / "limit.yaml"
    path.write_text(
        textwrap.dedent(
            """
            start: q
            global: {max_duration_s: 10, on_max_duration: late}
            steps:
              q: {ask: "Take your time.", no_input_ms: 60000, into: x, next: end}
              late: {say: "Time is up.", barge_in: "off", next: end}
              end: {hangup: true}
            """
        )
    )
    collector = Collector()
    line = VirtualLine([], speed=1.0, max_call_s=30)
    session = make_session(asr, tts, load_dialplan(path), line, collector, tmp_path)
    started = time.monotonic()
    line.run(session)
    assert [e.step for e in collector.of(StepEntered)] == ["q", "late", "end"]
    assert 10 <= time.monotonic() - started < 20
    assert line.bot_hung_up.is_set()
