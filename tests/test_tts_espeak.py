"""eSpeak NG engine: real synthesis through the installed `espeak-ng` binary."""

from __future__ import annotations

import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.media.audio import pcm_duration
from app.tts.base import TtsError
from app.tts.espeak import EspeakEngine

LONG_TEXT = " ".join(
    f"Sentence number {i}: your account balance is being checked, please hold the line."
    for i in range(60)
)


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def _child_pids() -> set[int]:
    """Children of this process, zombies included (a zombie is still listed until reaped)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        text = (task / "children").read_text().split()
        pids.update(int(p) for p in text)
    return pids


def test_speech_of_plausible_duration(engine: EspeakEngine) -> None:
    pcm = b"".join(engine.synthesize("one two three"))
    assert engine.sample_rate == 22050
    assert len(pcm) % 2 == 0
    seconds = pcm_duration(len(pcm), engine.sample_rate)
    assert 0.5 <= seconds <= 3.0, seconds
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms > 500, f"synthesised audio is near-silent (rms {rms:.0f})"
    # Not a WAV header mistaken for audio: the stream must not begin with "RIFF".
    assert not pcm.startswith(b"RIFF")


def test_longer_text_gives_longer_audio(engine: EspeakEngine) -> None:
    short = b"".join(engine.synthesize("one"))
    long = b"".join(engine.synthesize("one two three four five six seven eight"))
    assert len(long) > 3 * len(short)


def test_blank_text_yields_nothing(engine: EspeakEngine) -> None:
    assert list(engine.synthesize("")) == []
    assert list(engine.synthesize("  \n\t ")) == []


def test_text_that_looks_like_options_is_spoken(engine: EspeakEngine) -> None:
    pcm = b"".join(engine.synthesize("--help -v xx"))
    assert pcm_duration(len(pcm), engine.sample_rate) > 0.5


def test_chunks_stream_before_synthesis_ends(engine: EspeakEngine) -> None:
    start = time.monotonic()
    first_at: float | None = None
    chunks = 0
    total = 0
    for chunk in engine.synthesize(LONG_TEXT):
        if first_at is None:
            first_at = time.monotonic() - start
        chunks += 1
        total += len(chunk)
    elapsed = time.monotonic() - start
    assert first_at is not None
    assert chunks > 20, "long prompt arrived in too few chunks to be streamed"
    assert pcm_duration(total, engine.sample_rate) > 60
    assert first_at < elapsed / 3, f"first chunk at {first_at:.3f} s of {elapsed:.3f} s"


def test_early_close_leaves_no_child_process(engine: EspeakEngine) -> None:
    before = _child_pids()
    stream = engine.synthesize(LONG_TEXT)
    assert next(stream)
    assert _child_pids() - before, "expected a running espeak-ng child"
    stream.close()
    assert _child_pids() - before == set()


def test_unknown_voice_is_rejected() -> None:
    with pytest.raises(TtsError, match="no-such-voice"):
        EspeakEngine(voice="no-such-voice")


def test_unknown_voice_per_call_is_rejected(engine: EspeakEngine) -> None:
    with pytest.raises(TtsError, match="unknown espeak voice 'no-such-voice'"):
        list(engine.synthesize("hello", voice="no-such-voice"))
    with pytest.raises(TtsError, match="variant 'zzz'"):
        list(engine.synthesize("hello", voice="en-us+zzz"))


def test_listed_voice_and_variant_are_accepted(engine: EspeakEngine) -> None:
    plain = b"".join(engine.synthesize("hello", voice="en-us"))
    variant = b"".join(engine.synthesize("hello", voice="en-us+f3"))
    assert plain and variant
    assert plain != variant


def test_missing_binary_says_how_to_install() -> None:
    with pytest.raises(TtsError, match="apt-get install espeak-ng"):
        EspeakEngine(binary="/nonexistent/espeak-ng")


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(TtsError, match="words_per_minute"):
        EspeakEngine(words_per_minute=5)
    with pytest.raises(TtsError, match="pitch"):
        EspeakEngine(pitch=150)


def _fake_espeak(tmp_path: Path, body: str) -> Path:
    """A stand-in binary: real espeak-ng for the voice lists and the trial "a", then `body`."""
    script = tmp_path / "fake-espeak"
    script.write_text(
        '#!/bin/sh\ncase "$1" in --voices*) exec espeak-ng "$@";; esac\n'
        'IFS= read -r line\nif [ "$line" = a ]; then\n'
        '  printf a | exec espeak-ng "$@"\nfi\n' + body + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_hung_process_times_out(tmp_path: Path) -> None:
    hung = EspeakEngine(binary=str(_fake_espeak(tmp_path, "exec sleep 30")), timeout_s=0.5)
    before = _child_pids()
    start = time.monotonic()
    with pytest.raises(TtsError, match="produced nothing"):
        list(hung.synthesize("this will never be spoken"))
    assert time.monotonic() - start < 5
    assert _child_pids() - before == set()


def test_nonzero_exit_reports_stderr(tmp_path: Path) -> None:
    broken = EspeakEngine(binary=str(_fake_espeak(tmp_path, "echo 'disk on fire' >&2; exit 3")))
    with pytest.raises(TtsError, match=r"exit 3.*disk on fire"):
        list(broken.synthesize("hello"))


def test_concurrent_synthesis_matches_serial(engine: EspeakEngine) -> None:
    texts = ["one two three", "please enter your PIN", "thank you, goodbye", "one two three"]
    serial = [b"".join(engine.synthesize(t)) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda t: b"".join(engine.synthesize(t)), texts))
    assert parallel == serial
    assert serial[0] == serial[3]
