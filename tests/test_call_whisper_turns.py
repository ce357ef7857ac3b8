"""Turns heard by real Whisper weights (tiny.en) in a CallSession, no SIP: a caller's digits
read back exactly, and noise the VAD takes for speech giving no input rather than no match.

Real speech: FSDD digits; real noise: the Speech Commands background recordings in
../shared/data/noise. The bot's voice is eSpeak NG (its prompts are not recognised here).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from app.asr.base import AsrStream, RecognitionOptions
from app.asr.whisper import WhisperEngine
from app.call.events import EventBus, TurnCompleted
from app.call.session import CallSession, SessionConfig
from app.dialog.dialplan import load_dialplan
from app.media.audio import CALL_RATE
from app.media.g711 import pcm_to_ulaw, ulaw_to_pcm
from app.media.resample import resample
from app.tts.espeak import EspeakEngine
from tests.model_files import models_root
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.virtual_call import Collector, ScriptedLine

WHISPER_MODEL = "faster-whisper-tiny.en"
PLAN = """
description: one digits question
start: ask
steps:
  ask:
    ask: "Your code?"
    grammar: digits
    into: code
    min_digits: 4
    max_digits: 8
    no_input_ms: 2500
    retries: 0
    on_fail: bye
    next: bye
  bye:
    hangup: true
"""


class CountingEngine(WhisperEngine):
    """The real engine, counting the turns the endpointer opened (speech or not)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.streams = 0

    def open_stream(self, options: RecognitionOptions | None = None) -> AsrStream:
        self.streams += 1
        return super().open_stream(options)


@pytest.fixture(scope="module")
def whisper() -> CountingEngine:
    root = models_root(WHISPER_MODEL)
    return CountingEngine(root / WHISPER_MODEL, cpu_threads=2)


@pytest.fixture(scope="module")
def tts() -> EspeakEngine:
    return EspeakEngine()


def run_call(tmp_path: Path, asr: WhisperEngine, tts: EspeakEngine, caller: bytes) -> list:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    collector = Collector()
    line = ScriptedLine([(None, caller)], speed=1.0)
    session = CallSession(
        call_id="whisper-turns",
        dialplan=load_dialplan(path),
        asr=asr,
        tts=tts,
        bus=EventBus([collector]),
        config=SessionConfig(),
        request_hangup=line.hangup,
    )
    line.run(session)
    return collector.of(TurnCompleted)


def noise_clip(shared_data: Path, name: str, seconds: float, dbfs: float) -> bytes:
    """`seconds` of a noise recording at `dbfs` RMS, on the call's 8 kHz G.711 line."""
    with wave.open(str(shared_data / "noise" / name)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64)
    start = len(samples) // 3
    part = samples[start : start + int(rate * seconds)]
    gain = 10 ** (dbfs / 20) * 32768 / max(1.0, float(np.sqrt(np.mean(part**2))))
    pcm = np.clip(part * gain, -32768, 32767).astype("<i2").tobytes()
    return ulaw_to_pcm(pcm_to_ulaw(resample(pcm, rate, CALL_RATE)))


@pytest.mark.parametrize(
    ("speaker", "digits"), [("jackson", "40719"), ("yweweler", "8316"), ("george", "20574")]
)
def test_digits_are_read_exactly(
    tmp_path: Path, whisper, tts, shared_data: Path, speaker: str, digits: str
) -> None:
    reading = build_digit_utterance(shared_data, speaker, digits, (250, 500), seed=7)
    turns = run_call(tmp_path, whisper, tts, reading + silence(2000))
    assert [t.result for t in turns] == ["matched"], turns
    assert "".join(c for c in turns[0].transcript if c.isalnum()) != ""
    from app.asr.numbers import spoken_digits

    assert spoken_digits(turns[0].transcript) == digits


@pytest.mark.parametrize(
    "noise", ["running_tap.wav", "doing_the_dishes.wav", "exercise_bike.wav", "white_noise.wav"]
)
def test_noise_only_turn_is_no_input(tmp_path: Path, whisper, tts, shared_data, noise) -> None:
    before = whisper.streams
    clip = noise_clip(shared_data, noise, 1.5, -26.0)
    turns = run_call(tmp_path, whisper, tts, clip + silence(4000))
    assert whisper.streams > before, "the VAD never took the noise for speech: nothing tested"
    assert [t.result for t in turns] == ["no_input"], [(t.result, t.transcript) for t in turns]
