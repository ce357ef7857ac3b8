"""Resampling: lengths, fidelity in band, anti-aliasing, streaming equals one-shot."""

from __future__ import annotations

import numpy as np
import pytest

from app.media.resample import Resampler, resample


def _tone(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (22050, 8000), (8000, 8000)]
)
def test_one_shot_length(in_rate: int, out_rate: int) -> None:
    pcm = _tone(440, in_rate, 1.0)
    assert len(resample(pcm, in_rate, out_rate)) // 2 == pytest.approx(out_rate, abs=1)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (22050, 8000)])
def test_streaming_length_and_match_with_one_shot(in_rate: int, out_rate: int) -> None:
    pcm = _tone(700, in_rate, 1.0) + _tone(300, in_rate, 0.5)
    resampler = Resampler(in_rate, out_rate)
    chunk = 2 * 333  # odd-sized chunks in samples: boundaries fall anywhere
    streamed = b"".join(resampler.process(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk))
    streamed += resampler.flush()
    whole = resample(pcm, in_rate, out_rate)
    expected = len(pcm) // 2 * out_rate / in_rate
    assert abs(len(streamed) // 2 - expected) <= 1
    a, b = _samples(streamed), _samples(whole)
    n = min(a.size, b.size)
    assert np.max(np.abs(a[:n] - b[:n])) <= 4  # a few LSB of int16 rounding


def test_sine_survives_8k_16k_8k() -> None:
    pcm = _tone(1000, 8000, 1.0)
    back = _samples(resample(resample(pcm, 8000, 16000), 16000, 8000))
    original = _samples(pcm)
    core = slice(400, 7600)  # skip the filter's edges
    assert _rms(back[core]) == pytest.approx(_rms(original[core]), rel=0.01)
    spectrum = np.abs(np.fft.rfft(back[core] * np.hanning(back[core].size)))
    peak_hz = np.argmax(spectrum) * 8000 / back[core].size
    assert peak_hz == pytest.approx(1000, abs=2)
    assert np.max(np.abs(back[core] - original[core])) < 0.01 * 10000


def test_out_of_band_tone_is_removed_when_going_to_8k() -> None:
    # 6 kHz is above 8 kHz's Nyquist: without the filter it would alias to 2 kHz.
    out = _samples(resample(_tone(6000, 16000, 1.0), 16000, 8000))[200:-200]
    reference = _samples(_tone(6000, 16000, 1.0))
    attenuation_db = 20 * np.log10(_rms(reference) / max(_rms(out), 1e-9))
    assert attenuation_db > 40


def test_tts_rate_tone_lands_at_the_same_pitch() -> None:
    out = _samples(resample(_tone(1000, 22050, 1.0), 22050, 8000))[200:-200]
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    assert np.argmax(spectrum) * 8000 / out.size == pytest.approx(1000, abs=2)


def test_same_rate_is_a_passthrough() -> None:
    pcm = _tone(440, 8000, 0.1)
    resampler = Resampler(8000, 8000)
    assert resampler.process(pcm) == pcm
    assert resampler.flush() == b""


def test_resampler_is_reusable_after_flush() -> None:
    resampler = Resampler(22050, 8000)
    first = resampler.process(_tone(500, 22050, 0.5)) + resampler.flush()
    second = resampler.process(_tone(500, 22050, 0.5)) + resampler.flush()
    assert len(first) == len(second)
    # Equal up to int16 rounding: nothing of the first stream leaks into the second.
    assert np.max(np.abs(_samples(first) - _samples(second))) <= 2


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        resample(b"\x00\x00\x00", 8000, 16000)
    with pytest.raises(ValueError, match="in_rate"):
        Resampler(0, 8000)
    with pytest.raises(ValueError, match="out_rate"):
        resample(b"", 8000, -1)
