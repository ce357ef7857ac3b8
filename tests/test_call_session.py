"""The per-call core on real audio, with no SIP stack: a virtual line drives a `CallSession`.

The caller's answer is a digit string spoken by an FSDD speaker; the engines are the real ones
(PocketSphinx, eSpeak NG). We check the dialogue's outcome, the turn record and that the bot's
read-back is in the audio it played.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.asr.numbers import spoken_digits
from app.asr.pocketsphinx import PocketSphinxEngine
from app.call.events import EventBus, StepEntered, TurnCompleted
from app.call.session import CallSession, SessionConfig
from app.dialog.dialplan import load_dialplan
from app.media.resample import resample
from app.tts.espeak import EspeakEngine
from tests.conftest import REPO_ROOT
from tests.sip.audio_match import find_reference
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.virtual_call import Collector, VirtualLine

SPEED = 3.0  # the media clock runs 3x real time; the engines must keep up


@pytest.fixture(scope="module")
def asr() -> PocketSphinxEngine:
    return PocketSphinxEngine()


@pytest.fixture(scope="module")
def tts() -> EspeakEngine:
    return EspeakEngine()


def run_demo(asr, tts, utterances, caller_hangs_up_after_s=None, no_input_ms=6000):
    collector = Collector()
    line = VirtualLine(utterances, speed=SPEED)
    session = CallSession(
        call_id="test-call",
        dialplan=load_dialplan(REPO_ROOT / "dialplans" / "demo.yaml"),
        asr=asr,
        tts=tts,
        bus=EventBus([collector]),
        config=SessionConfig(no_input_ms=no_input_ms),
        request_hangup=line.hangup,
        variables={"caller": "sip:test@example.org", "dialled": "1000"},
    )
    line.run(session, caller_hangs_up_after_s)
    return session, line, collector.events


@pytest.mark.parametrize("digits", ["8932", "8792"])
def test_demo_reads_back_spoken_account_number(asr, tts, shared_data: Path, digits):
    utterance = build_digit_utterance(shared_data, "jackson", digits, seed=int(digits)) + silence(
        500
    )
    session, line, events = run_demo(asr, tts, [utterance])

    assert session.error is None
    assert line.bot_hung_up.is_set()
    assert session.variables["account"] == digits
    steps = [e.step for e in events if isinstance(e, StepEntered)]
    assert steps == ["greet", "ask_account", "confirm", "goodbye", "end"]
    (turn,) = [e for e in events if isinstance(e, TurnCompleted)]
    assert spoken_digits(turn.transcript) == digits
    assert turn.grammar == "digits" and 0.0 < turn.confidence <= 1.0
    assert turn.speech_end_at < turn.asr_final_at < turn.first_audio_at

    reply = b"".join(tts.synthesize(f"You said {' '.join(digits)}. Thank you."))
    match = find_reference(bytes(line.heard), resample(reply, tts.sample_rate, 8000))
    assert match.correlation > 0.95, match


def test_silent_caller_gets_reprompts_then_goodbye(asr, tts):
    session, line, events = run_demo(asr, tts, [], no_input_ms=1500)
    assert session.error is None and line.bot_hung_up.is_set()
    assert "account" not in session.variables
    steps = [e.step for e in events if isinstance(e, StepEntered)]
    assert steps[-2:] == ["goodbye", "end"] and "confirm" not in steps
    turns = [e for e in events if isinstance(e, TurnCompleted)]
    assert len(turns) == 3  # first attempt plus two retries, all without input
    assert all(t.transcript == "" and t.speech_end_at is None for t in turns)


def test_caller_hanging_up_mid_prompt_ends_the_worker_cleanly(asr, tts):
    session, line, events = run_demo(asr, tts, [], caller_hangs_up_after_s=1.0)
    assert session.error is None
    assert not line.bot_hung_up.is_set()  # the caller left first; the bot asked for nothing
    assert not session.is_alive()
    assert not [e for e in events if isinstance(e, TurnCompleted)]
