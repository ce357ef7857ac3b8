"""Fallback chains: a failing, hung or overloaded engine hands the turn to the next one.

The engines that answer are the real ones (PocketSphinx on FSDD speech, eSpeak NG); the ones
that fail are small stand-ins that raise, hang or run slower than real time. Every test checks
that the turn goes on within the engine's limit and that the result says which engine answered
and why the others did not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.asr.base import AsrEngine, AsrError, AsrResult, AsrStream, RecognitionOptions
from app.asr.fallback import NO_ENGINE, FallbackAsrEngine
from app.asr.pocketsphinx import PocketSphinxEngine
from app.call.events import EventBus, TurnCompleted
from app.call.session import CallSession, SessionConfig
from app.dialog.dialplan import load_dialplan
from app.media.audio import CALL_RATE, iter_frames
from app.resilience import CircuitBreaker, EngineGuard, Limits
from app.tts.base import TtsEngine, TtsError
from app.tts.espeak import EspeakEngine
from app.tts.fallback import FallbackTtsEngine
from tests.conftest import REPO_ROOT
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.virtual_call import Collector, VirtualLine

DIGITS = RecognitionOptions(grammar="digits")
RELEASE = threading.Event()  # set at module teardown so hung stand-ins end their threads


@pytest.fixture(scope="module", autouse=True)
def _release_hung_engines() -> Iterator[None]:
    yield
    RELEASE.set()


@pytest.fixture(scope="module")
def sphinx() -> PocketSphinxEngine:
    return PocketSphinxEngine(pool_size=3, preload=1)


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine()


@pytest.fixture(scope="module")
def utterance(shared_data: Path) -> bytes:
    return build_digit_utterance(shared_data, "jackson", "4193", seed=7) + silence(300)


class _Stream(AsrStream):
    def __init__(self, engine: StandIn) -> None:
        self.engine = engine
        self.frames = 0

    def feed(self, pcm: bytes) -> AsrResult | None:
        self.frames += 1
        if self.engine.mode == "raise" and self.frames > 5:
            raise RuntimeError("model crashed: CUDA error 700")
        if self.engine.mode == "hang" and self.frames > 5:
            RELEASE.wait()
        if self.engine.mode == "slow":
            time.sleep(self.engine.delay_per_feed_s)
        return None

    def finish(self) -> AsrResult:
        if self.engine.mode == "hang_final":
            RELEASE.wait()
        return AsrResult(self.engine.answer, 0.9, True, engine=self.engine.name)


class StandIn(AsrEngine):
    """An ASR engine that answers `answer`, or raises, hangs or runs slow as `mode` says."""

    sample_rate = CALL_RATE

    def __init__(self, mode: str, name: str = "standin", answer: str = "stand in") -> None:
        self.mode, self.name, self.answer = mode, name, answer
        self.delay_per_feed_s = 0.04
        self.opened = 0

    def open_stream(self, options: RecognitionOptions | None = None) -> AsrStream:
        self.opened += 1
        if self.mode == "reject":
            raise AsrError("not in the model's vocabulary: zyzzyva")
        return _Stream(self)


def guard(
    name: str, first_s: float = 0.3, final_s: float = 0.5, streams: int = 0, **kw
) -> EngineGuard:
    return EngineGuard(name, Limits(first_s, final_s, streams), CircuitBreaker(name, **kw))


def hear(
    engine: AsrEngine, audio: bytes, options: RecognitionOptions = DIGITS
) -> tuple[AsrResult, float]:
    """Feed `audio` in 20 ms frames as the listener does; (final result, seconds finish took)."""
    stream = engine.open_stream(options)
    for frame in iter_frames([audio], CALL_RATE):
        stream.feed(frame)
    time.sleep(0.2)  # frames come in faster than real time here: let the engine catch up
    started = time.monotonic()
    result = stream.finish()
    return result, time.monotonic() - started


def test_pocketsphinx_alone_in_a_chain_hears_what_it_hears_directly(sphinx, utterance):
    direct, _ = hear(sphinx_direct := sphinx, utterance)
    chained, _ = hear(
        FallbackAsrEngine([(sphinx_direct, guard("pocketsphinx", 1.5, 2.0))]), utterance
    )
    assert direct.text and chained.text == direct.text
    assert chained.engine == "pocketsphinx" and chained.notes == ()


def test_an_engine_that_raises_mid_turn_hands_the_whole_turn_to_the_next(sphinx, utterance):
    crashing = StandIn("raise", "whisper")
    chain = FallbackAsrEngine(
        [(crashing, guard("whisper")), (sphinx, guard("pocketsphinx", 1.5, 2.0))]
    )
    result, _ = hear(chain, utterance)
    direct, _ = hear(sphinx, utterance)
    assert result.engine == "pocketsphinx"
    assert result.text == direct.text  # the replay gave it the audio from the first frame
    assert len(result.notes) == 1 and result.notes[0].startswith(
        "whisper: RuntimeError: model crashed"
    )


def test_an_engine_that_hangs_while_fed_is_dropped_after_its_first_result_limit(sphinx, utterance):
    chain = FallbackAsrEngine(
        [
            (StandIn("hang", "vosk"), guard("vosk", first_s=0.3)),
            (sphinx, guard("pocketsphinx", 1.5, 2.0)),
        ]
    )
    stream = chain.open_stream(DIGITS)
    fed_at = []
    for frame in iter_frames([utterance], CALL_RATE):
        started = time.monotonic()
        stream.feed(frame)
        fed_at.append(time.monotonic() - started)
        time.sleep(0.005)  # a few ms per frame: the lag builds up in wall-clock time
    result = stream.finish()
    assert max(fed_at) < 0.1  # the call's worker never waited on the hung engine
    assert result.engine == "pocketsphinx" and result.text
    assert "vosk: fell" in result.notes[0] and "behind the audio" in result.notes[0]


def test_an_engine_whose_final_hangs_is_dropped_at_its_final_limit(sphinx, utterance):
    chain = FallbackAsrEngine(
        [
            (StandIn("hang_final", "whisper"), guard("whisper", final_s=0.4)),
            (sphinx, guard("pocketsphinx", 1.5, 2.0)),
        ]
    )
    result, took = hear(chain, utterance)
    assert result.engine == "pocketsphinx" and result.text
    assert result.notes == ("whisper: no final result within 400 ms",)
    assert took < 0.4 + 2.0  # its own limit, then PocketSphinx on the replayed turn


def test_a_slow_engine_under_load_sheds_to_the_next(sphinx, utterance):
    slow = StandIn("slow", "whisper")  # 40 ms of work per 20 ms frame: falls behind steadily
    chain = FallbackAsrEngine(
        [(slow, guard("whisper", first_s=0.3)), (sphinx, guard("pocketsphinx", 1.5, 2.0))]
    )
    stream = chain.open_stream(DIGITS)
    for frame in iter_frames([utterance], CALL_RATE):
        stream.feed(frame)
        time.sleep(0.02)  # real time
    result = stream.finish()
    assert result.engine == "pocketsphinx" and result.text
    assert "behind the audio" in result.notes[0]


def test_the_circuit_opens_after_repeated_failures_and_a_probe_closes_it(sphinx):
    flaky = StandIn("raise", "whisper")
    chain = FallbackAsrEngine(
        [
            (flaky, guard("whisper", failures=2, cooldown_s=0.3)),
            (StandIn("ok", "vosk", "yes"), guard("vosk")),
        ]
    )
    audio = bytes(320) * 10
    for _ in range(2):
        result, _ = hear(chain, audio)
        assert result.engine == "vosk" and "RuntimeError" in result.notes[0]
    assert flaky.opened == 2
    result, _ = hear(chain, audio)
    assert result.notes[0].startswith("whisper: skipped, circuit open")
    assert flaky.opened == 2  # not even asked while open
    time.sleep(0.35)
    flaky.mode = "ok"  # the engine recovered: the probe turn succeeds and closes the circuit
    result, _ = hear(chain, audio)
    assert result.engine == "whisper" and result.notes == ()
    assert chain.chain[0][1].breaker.state == "closed"


def test_retry_after_keeps_the_circuit_open_at_least_that_long():
    breaker = CircuitBreaker("openai", failures=3, cooldown_s=0.1)
    breaker.failure("HTTP 429", retry_after_s=30.0)
    reason = breaker.allow()
    assert reason is not None and "circuit open for 30 s" in reason


def test_a_full_engine_sheds_the_next_turn_instead_of_queueing(sphinx):
    busy = StandIn("hang_final", "whisper")
    chain = FallbackAsrEngine(
        [
            (busy, guard("whisper", final_s=5.0, streams=1)),
            (StandIn("ok", "vosk", "two"), guard("vosk")),
        ]
    )
    first = chain.open_stream(DIGITS)  # holds whisper's only slot
    result, _ = hear(chain, bytes(320) * 5)
    assert result.engine == "vosk" and result.text == "two"
    assert result.notes == ("whisper: skipped, busy: already serving its limit of 1",)
    first.close()


def test_options_an_engine_cannot_take_skip_it_without_tripping_its_breaker():
    picky = StandIn("reject", "vosk")
    chain = FallbackAsrEngine(
        [
            (picky, guard("vosk", failures=1)),
            (StandIn("ok", "pocketsphinx", "zyzzyva"), guard("pocketsphinx")),
        ]
    )
    result, _ = hear(chain, bytes(320) * 5, RecognitionOptions(phrases=("zyzzyva",)))
    assert result.engine == "pocketsphinx"
    assert "vosk: skipped, cannot take this turn" in result.notes[0]
    assert chain.chain[0][1].breaker.state == "closed"


def test_when_every_engine_fails_the_turn_ends_empty_within_the_limits():
    chain = FallbackAsrEngine(
        [
            (StandIn("raise", "whisper"), guard("whisper")),
            (StandIn("hang_final", "vosk"), guard("vosk", final_s=0.3)),
        ]
    )
    result, took = hear(chain, bytes(320) * 20)
    assert result == AsrResult("", 0.0, True, engine=NO_ENGINE, notes=result.notes)
    assert [note.split(":")[0] for note in result.notes] == ["whisper", "vosk"]
    assert took < 0.3 + 0.5


# -- TTS ---------------------------------------------------------------------------------------


class BrokenTts(TtsEngine):
    """A TTS engine that raises, hangs before or after its first chunk, as `mode` says."""

    sample_rate = 16000

    def __init__(self, mode: str, name: str = "piper") -> None:
        self.mode, self.name = mode, name
        self.voices = {"en_US-lessac-medium"}
        self.asked_voice: list[str | None] = []

    def has_voice(self, voice: str) -> bool:
        return voice in self.voices

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        self.asked_voice.append(voice)
        if self.mode == "raise":
            raise TtsError("HTTP 429 from the speech API", retry_after_s=12.0)
        if self.mode == "ok":
            yield b"\x10\x00" * 1600
            return
        if self.mode == "stall":
            yield b"\x10\x00" * 160
        RELEASE.wait()


def speak(
    engine: TtsEngine, text: str = "Hello there.", voice: str | None = None
) -> tuple[bytes, float]:
    started = time.monotonic()
    pcm = b"".join(engine.synthesize(text, voice))
    return pcm, time.monotonic() - started


def test_tts_falls_back_to_espeak_when_the_first_engine_raises(espeak):
    chain = FallbackTtsEngine([(BrokenTts("raise"), guard("piper")), (espeak, guard("espeak"))])
    pcm, _ = speak(chain)
    assert len(pcm) > 0.3 * chain.sample_rate * 2  # a real sentence, resampled to piper's rate
    assert chain.sample_rate == 16000
    render = chain.last_render()
    assert render is not None and render.engine == "espeak"
    assert render.notes == ("piper: TtsError: HTTP 429 from the speech API",)
    assert chain.chain[0][1].breaker.allow() is not None  # Retry-After opened the circuit


@pytest.mark.parametrize("mode", ["hang", "stall"])
def test_a_hung_or_stalled_tts_engine_is_dropped_after_its_limit(espeak, mode):
    chain = FallbackTtsEngine(
        [(BrokenTts(mode), guard("piper", first_s=0.3)), (espeak, guard("espeak"))]
    )
    pcm, took = speak(chain)
    render = chain.last_render()
    assert render.engine == "espeak" and render.notes == ("piper: no audio for 300 ms",)
    assert took < 0.3 + 2.0 and len(pcm) > 16000


def test_a_dialplan_voice_goes_only_to_engines_that_have_it(espeak):
    piper = BrokenTts("ok")
    chain = FallbackTtsEngine([(piper, guard("piper")), (espeak, guard("espeak"))])
    speak(chain, voice="en_US-lessac-medium")
    speak(chain, voice="en-gb")  # an eSpeak voice: piper speaks in its own
    assert piper.asked_voice == ["en_US-lessac-medium", None]
    assert chain.has_voice("en-gb") and not chain.has_voice("xx-nonexistent")


def test_no_tts_engine_left_is_a_clear_error():
    chain = FallbackTtsEngine(
        [(BrokenTts("raise"), guard("piper")), (BrokenTts("raise", "openai"), guard("openai"))]
    )
    with pytest.raises(
        TtsError, match=r"no TTS engine could speak: piper: TtsError: HTTP 429.*; openai: TtsError"
    ):
        speak(chain)


# -- a whole call ------------------------------------------------------------------------------


def test_a_call_goes_on_through_failing_engines_and_its_turn_says_so(sphinx, espeak, shared_data):
    digits = "8932"
    answer = build_digit_utterance(shared_data, "jackson", digits, seed=int(digits)) + silence(500)
    asr = FallbackAsrEngine(
        [(StandIn("raise", "whisper"), guard("whisper")), (sphinx, guard("pocketsphinx", 1.5, 2.0))]
    )
    tts = FallbackTtsEngine(
        [(BrokenTts("hang"), guard("piper", first_s=0.3)), (espeak, guard("espeak"))]
    )
    collector = Collector()
    line = VirtualLine([answer], speed=3.0)
    session = CallSession(
        call_id="fallback-call",
        dialplan=load_dialplan(REPO_ROOT / "dialplans" / "demo.yaml"),
        asr=asr,
        tts=tts,
        bus=EventBus([collector]),
        config=SessionConfig(),
        request_hangup=line.hangup,
        variables={"caller": "sip:test@example.org", "dialled": "1000"},
    )
    line.run(session)
    assert session.error is None and line.bot_hung_up.is_set()
    assert session.variables["account"] == digits
    (turn,) = collector.of(TurnCompleted)
    assert turn.engine == "pocketsphinx" and turn.tts_engine == "espeak"
    assert turn.fallbacks[0].startswith("asr whisper: RuntimeError: model crashed")
    assert any(note.startswith("tts piper: ") for note in turn.fallbacks[1:])
