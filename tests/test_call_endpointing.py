"""Endpointing on real speech: FSDD digits strung into a caller's answer."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from app.call.endpointing import (
    Endpointer,
    EndpointerConfig,
    EndpointEvent,
    SpeechEnded,
    SpeechStarted,
)
from app.media.audio import FRAME_MS, frame_bytes
from app.media.resample import resample

RATE = 8000
FRAME = frame_bytes(RATE)
ACTIVE_DBFS = -45.0
"""A 10 ms window louder than this is speech: 5 dB over the -50 dBFS line noise we add."""


def _window_dbfs(x: np.ndarray, window: int = RATE // 100) -> np.ndarray:
    n = x.size // window * window
    rms = np.sqrt(np.mean(x[:n].astype(np.float64).reshape(-1, window) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-9) / 32768)


def _active_span(x: np.ndarray) -> tuple[float, float]:
    """(onset, end) in seconds: first and last 10 ms window above ACTIVE_DBFS."""
    active = np.flatnonzero(_window_dbfs(x) > ACTIVE_DBFS)
    return active[0] / 100, (active[-1] + 1) / 100


def _digit(shared_data: Path, name: str) -> np.ndarray:
    """One FSDD digit with its own leading/trailing silence cut, so our pauses are the pauses."""
    with wave.open(str(shared_data / "fsdd" / name)) as wav:
        assert wav.getframerate() == RATE
        x = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    onset, end = _active_span(x)
    return x[int(onset * RATE) : int(end * RATE)].astype(np.float64)


def _noise(seconds: float, seed: int, dbfs: float = -50.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 32768 * 10 ** (dbfs / 20), round(seconds * RATE))


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def _answer(shared_data: Path, speaker: str, pauses: tuple[float, ...]) -> tuple[bytes, list]:
    """Digits 4, 1, 7, 2 (index 3) of one speaker: 1 s lead-in, `pauses`, 1.5 s tail, noise.

    Returns the PCM and the (start, end) seconds of each digit.
    """
    parts = [np.zeros(RATE)]
    spans = []
    at = 1.0
    for i, digit in enumerate((4, 1, 7, 2)):
        x = _digit(shared_data, f"{digit}_{speaker}_3.wav")
        parts.append(x)
        spans.append((at, at + x.size / RATE))
        at += x.size / RATE
        pause = pauses[i] if i < len(pauses) else 1.5
        parts.append(np.zeros(int(pause * RATE)))
        at += pause
    signal = np.concatenate(parts)
    return _pcm(signal + _noise(signal.size / RATE, seed=len(speaker))), spans


def _run(endpointer: Endpointer, pcm: bytes) -> list[tuple[float, EndpointEvent]]:
    """Feed whole frames; return (seconds at the end of the triggering frame, event)."""
    events = []
    for start in range(0, len(pcm) - FRAME + 1, FRAME):
        event = endpointer.process(pcm[start : start + FRAME])
        if event is not None:
            events.append((endpointer.frame_count * FRAME_MS / 1000, event))
    return events


@pytest.mark.parametrize("speaker", ["jackson", "nicolas", "george", "yweweler"])
def test_digit_string_is_one_utterance(shared_data: Path, speaker: str) -> None:
    pcm, spans = _answer(shared_data, speaker, pauses=(0.5, 0.2, 0.35))
    onset, end = _active_span(np.frombuffer(pcm, dtype="<i2"))
    # The silence a digits question waits while the answer is incomplete (see `Hangover`);
    # the 400 ms default alone would split at the 0.5 s pause, which the listener prevents.
    config = EndpointerConfig(end_silence_ms=1000)
    events = _run(Endpointer(config), pcm)

    assert [type(e) for _, e in events] == [SpeechStarted, SpeechEnded]
    (started_at, started), (ended_at, ended) = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert 0 <= started_at - onset <= 0.32
    # The pre-roll reaches back before the true onset: the first syllable is not lost.
    assert started_at - len(started.pre_roll) / (2 * RATE) <= onset
    assert ended.reason == "silence"
    assert ended_at > spans[-1][1]  # not between digits
    assert end < ended_at <= end + (config.end_silence_ms + 200) / 1000
    assert abs(ended.speech_end_at_frame * FRAME_MS / 1000 - end) <= 0.25


@pytest.mark.parametrize("speaker", ["jackson", "nicolas", "george", "yweweler"])
def test_speech_end_is_the_voice_not_the_vads_hangover(shared_data: Path, speaker: str) -> None:
    """webrtcvad keeps saying "speech" for 60-140 ms after the voice stops; that tail would
    be added to every turn's latency. The noise-floor gate ends speech at the voice."""
    pcm, _ = _answer(shared_data, speaker, pauses=(0.3, 0.3, 0.3))
    _, end = _active_span(np.frombuffer(pcm, dtype="<i2"))

    def speech_end(margin_db: float) -> float:
        config = EndpointerConfig(end_silence_ms=1000, tail_margin_db=margin_db)
        events = [e for _, e in _run(Endpointer(config), pcm) if isinstance(e, SpeechEnded)]
        assert len(events) == 1 and events[0].reason == "silence"
        return events[0].speech_end_at_frame * FRAME_MS / 1000

    gated, vad_only = speech_end(8.0), speech_end(0.0)
    assert end - 0.06 <= gated <= end + 0.06
    assert vad_only >= gated + 0.04  # the gate is what removed the tail


@pytest.mark.parametrize("noise_dbfs", [-65.0, -40.0])
def test_gate_follows_the_line_noise(shared_data: Path, noise_dbfs: float) -> None:
    """On a noisier line the floor rises with it: the digits are still one utterance, and
    the speech still ends within a frame or two of the voice."""
    digits = [_digit(shared_data, f"{d}_george_3.wav") for d in (4, 1, 7, 2)]
    parts = [np.zeros(RATE)]
    for x in digits:
        parts += [x, np.zeros(int(0.3 * RATE))]
    parts.append(np.zeros(int(1.5 * RATE)))
    clean = np.concatenate(parts)
    _, end = _active_span(clean)
    noisy = _pcm(clean + _noise(clean.size / RATE, seed=7, dbfs=noise_dbfs))
    endpointer = Endpointer(EndpointerConfig(end_silence_ms=1000))
    events = [e for _, e in _run(endpointer, noisy)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert abs(endpointer.noise_floor_dbfs - noise_dbfs) < 6
    ended = events[1]
    assert isinstance(ended, SpeechEnded)
    assert end - 0.1 <= ended.speech_end_at_frame * FRAME_MS / 1000 <= end + 0.06


def test_in_speech_spans_the_utterance(shared_data: Path) -> None:
    pcm, _ = _answer(shared_data, "jackson", pauses=(0.3, 0.3, 0.3))
    endpointer = Endpointer()
    states = []
    for start in range(0, len(pcm) - FRAME + 1, FRAME):
        event = endpointer.process(pcm[start : start + FRAME])
        states.append((event, endpointer.in_speech))
    started = next(i for i, (e, _) in enumerate(states) if isinstance(e, SpeechStarted))
    ended = next(i for i, (e, _) in enumerate(states) if isinstance(e, SpeechEnded))
    assert not any(s for _, s in states[:started])
    assert all(s for _, s in states[started:ended])
    assert not any(s for _, s in states[ended:])


def test_works_at_16k(shared_data: Path) -> None:
    pcm, spans = _answer(shared_data, "george", pauses=(0.3, 0.3, 0.3))
    wide = resample(pcm, RATE, 16000)
    endpointer = Endpointer(sample_rate=16000)
    size = frame_bytes(16000)
    timeline = []
    for start in range(0, len(wide) - size + 1, size):
        event = endpointer.process(wide[start : start + size])
        if event is not None:
            timeline.append((endpointer.frame_count * FRAME_MS / 1000, type(event)))
    assert [kind for _, kind in timeline] == [SpeechStarted, SpeechEnded]
    assert spans[0][0] < timeline[0][0] < spans[0][1]
    assert spans[-1][1] < timeline[1][0] < spans[-1][1] + 0.9


def test_long_utterance_ends_at_max_length(shared_data: Path) -> None:
    pcm, _ = _answer(shared_data, "jackson", pauses=(0.3, 0.3, 0.3))
    config = EndpointerConfig(max_utterance_ms=1000)
    events = _run(Endpointer(config), pcm)
    (started_at, started), (ended_at, ended) = events[:2]
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert ended.reason == "max_length"
    pre_roll_frames = config.pre_roll_ms // FRAME_MS  # the 1 s lead-in fills it
    onset_frames = len(started.pre_roll) // FRAME - pre_roll_frames
    utterance_s = ended_at - started_at + onset_frames * FRAME_MS / 1000
    assert utterance_s == pytest.approx(1.0, abs=0.001)
    assert ended.speech_end_at_frame * FRAME_MS / 1000 == pytest.approx(ended_at)


def test_a_click_does_not_start_speech() -> None:
    rng = np.random.default_rng(7)
    click = rng.normal(0.0, 8000.0, int(0.06 * RATE))  # 60 ms broadband burst
    signal = np.concatenate([_noise(1.0, 1), click + _noise(0.06, 2), _noise(1.0, 3)])
    pcm = _pcm(signal)
    assert _run(Endpointer(), pcm) == []
    # The same burst is speech to the VAD: only min_speech_ms keeps it out.
    short = _run(Endpointer(EndpointerConfig(min_speech_ms=40)), pcm)
    assert [type(e) for _, e in short][:1] == [SpeechStarted]


@pytest.mark.parametrize("level_dbfs", [None, -60.0, -50.0])
def test_silence_never_starts_speech(level_dbfs: float | None) -> None:
    seconds = 10.0
    signal = np.zeros(int(seconds * RATE)) if level_dbfs is None else _noise(seconds, 5, level_dbfs)
    endpointer = Endpointer(EndpointerConfig(aggressiveness=0))
    assert _run(endpointer, _pcm(signal)) == []
    assert not endpointer.in_speech
    assert endpointer.frame_count == int(seconds * 1000 / FRAME_MS)


def test_reset_starts_a_new_turn(shared_data: Path) -> None:
    pcm, _ = _answer(shared_data, "george", pauses=(0.3, 0.3, 0.3))
    endpointer = Endpointer()
    half = len(pcm) // 2 // FRAME * FRAME
    first = _run(endpointer, pcm[:half])
    assert endpointer.in_speech and len(first) == 1
    endpointer.reset()
    assert not endpointer.in_speech and endpointer.frame_count == 0
    second = _run(endpointer, pcm)
    assert [type(e) for _, e in second] == [SpeechStarted, SpeechEnded]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aggressiveness", 4),
        ("aggressiveness", -1),
        ("min_speech_ms", 0),
        ("end_silence_ms", -20),
        ("max_utterance_ms", 0),
        ("pre_roll_ms", -1),
        ("tail_margin_db", -1.0),
        ("max_utterance_ms", 100),  # shorter than min_speech_ms
    ],
)
def test_invalid_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        EndpointerConfig(**{field: value})


def test_wrong_frame_size_and_rate_are_rejected() -> None:
    with pytest.raises(ValueError, match="320 bytes"):
        Endpointer().process(bytes(100))
    with pytest.raises(ValueError, match="sample_rate"):
        Endpointer(sample_rate=22050)
