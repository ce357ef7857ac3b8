"""audio_match: finding a reference rendering inside a call recording, on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.sip.audio_match import find_reference, find_reference_pieces, telephone_reference
from tests.sip.rtp_pcap import build_digit_utterance
from tests.sip.wavfile import read_wav

RATE = 8000


def _pcm(samples: np.ndarray) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


@pytest.fixture(scope="module")
def jfk(shared_data: Path) -> bytes:
    """11 s of real speech as a caller hears it: 8 kHz, through PCMU."""
    pcm, rate = read_wav(shared_data / "speech" / "jfk.wav")
    return telephone_reference(pcm, rate, "PCMU")


def test_reference_in_noise_is_found_at_its_offset(jfk: bytes) -> None:
    reference = jfk[2 * RATE * 2 : 5 * RATE * 2]  # 3 s of speech
    rng = np.random.default_rng(7)
    recording = rng.normal(0, 150, 10 * RATE)  # about -47 dBFS of hiss
    offset = int(3.217 * RATE)
    ref = _samples(reference)
    recording[offset : offset + ref.size] += 0.7 * ref  # and a level change
    match = find_reference(_pcm(recording), reference)
    assert match.correlation > 0.9
    assert match.offset_samples == offset
    assert match.offset_s == pytest.approx(3.217, abs=1 / RATE)


def test_unrelated_speech_is_not_found(jfk: bytes, shared_data: Path) -> None:
    digits = build_digit_utterance(shared_data, "george", "3141", seed=3)
    digits = telephone_reference(digits, RATE, "PCMA")
    assert find_reference(jfk, digits).correlation < 0.5
    same_words_other_speaker = build_digit_utterance(shared_data, "yweweler", "3141", seed=3)
    assert find_reference(digits, same_words_other_speaker).correlation < 0.5


def test_recording_that_starts_inside_the_reference(jfk: bytes) -> None:
    reference = jfk[: 4 * RATE * 2]
    recording = jfk[int(0.5 * RATE) * 2 : 6 * RATE * 2]  # first 0.5 s missing
    match = find_reference(recording, reference)
    assert match.offset_samples == -int(0.5 * RATE)
    assert 0.5 < match.correlation < 1.0  # the missing speech costs correlation


def test_frame_slips_split_the_whole_match_but_not_the_pieces(jfk: bytes) -> None:
    reference = jfk[: 6 * RATE * 2]
    frame = 160 * 2
    cut = 3 * RATE * 2
    # A jitter buffer inserted two 20 ms frames of silence in the middle.
    recording = b"\x00" * 4000 + reference[:cut] + b"\x00" * (2 * frame) + reference[cut:]
    whole = find_reference(recording, reference)
    pieces = find_reference_pieces(recording, reference)
    assert pieces.correlation > 0.95
    assert pieces.correlation > whole.correlation
    assert pieces.offset_s == pytest.approx(2000 / RATE)
    assert pieces.max_slip_s == pytest.approx(0.04)


def test_silent_reference_is_an_error(jfk: bytes) -> None:
    with pytest.raises(ValueError, match="silent"):
        find_reference(jfk, b"\x00\x00" * RATE)
    with pytest.raises(ValueError, match="16-bit"):
        find_reference(jfk, b"\x01\x02\x03")
