"""G.711 against the ITU-T tables and on real speech."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from app.media.g711 import (
    Codec,
    alaw_to_pcm,
    pcm_to_alaw,
    pcm_to_ulaw,
    ulaw_to_pcm,
)


def _itu_ulaw(code: int) -> int:
    """G.711 mu-law expansion (Table 2a), in 16-bit units: independent of audioop."""
    x = ~code & 0xFF
    magnitude = (((x & 0x0F) << 3) + 0x84) << ((x & 0x70) >> 4)
    return (0x84 - magnitude) if x & 0x80 else (magnitude - 0x84)


def _itu_alaw(code: int) -> int:
    """G.711 A-law expansion (Table 1a), in 16-bit units: independent of audioop."""
    x = code ^ 0x55
    segment = (x & 0x70) >> 4
    magnitude = (x & 0x0F) << 4
    magnitude = magnitude + 8 if segment == 0 else (magnitude + 0x108) << (segment - 1)
    return magnitude if x & 0x80 else -magnitude


def _decoded(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<i2").tolist()


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xFF, 0), (0x7F, 0), (0x80, 32124), (0x00, -32124), (0xFE, 8), (0x7E, -8), (0xEF, 132)],
)
def test_ulaw_table_values(code: int, value: int) -> None:
    assert _decoded(ulaw_to_pcm(bytes([code]))) == [value]


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0xC5, 264)],
)
def test_alaw_table_values(code: int, value: int) -> None:
    assert _decoded(alaw_to_pcm(bytes([code]))) == [value]


def test_every_code_decodes_as_the_itu_expansion() -> None:
    codes = bytes(range(256))
    assert _decoded(ulaw_to_pcm(codes)) == [_itu_ulaw(c) for c in range(256)]
    assert _decoded(alaw_to_pcm(codes)) == [_itu_alaw(c) for c in range(256)]


def test_decoded_codes_encode_back_to_themselves() -> None:
    codes = bytes(range(256))
    assert pcm_to_alaw(alaw_to_pcm(codes)) == codes
    # mu-law has two zeros (0xFF and 0x7F); the encoder emits only the positive one.
    expected = bytes(0xFF if c == 0x7F else c for c in range(256))
    assert pcm_to_ulaw(ulaw_to_pcm(codes)) == expected


def test_silence_encodes_to_the_idle_codes() -> None:
    assert Codec.PCMU.encode(bytes(4)) == b"\xff\xff"
    assert Codec.PCMA.encode(bytes(4)) == b"\xd5\xd5"


@pytest.mark.parametrize(("codec", "max_relative"), [(Codec.PCMU, 0.051), (Codec.PCMA, 0.0313)])
def test_quantisation_error_is_bounded_for_every_sample(codec: Codec, max_relative: float) -> None:
    x = np.arange(-32767, 32768, dtype=np.int64)
    pcm = x.astype("<i2").tobytes()
    y = np.frombuffer(codec.decode(codec.encode(pcm)), dtype="<i2").astype(np.int64)
    error = np.abs(y - x)
    small = np.abs(x) < 256
    assert error[small].max() <= 16  # finest step: 2 (mu) or 1 (A) 13/14-bit units
    loud = (np.abs(x) >= 256) & (np.abs(x) <= 32000)
    assert (error[loud] / np.abs(x[loud])).max() <= max_relative


def _read_wav(path: Path) -> bytes:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (8000, 2, 1)
        return wav.readframes(wav.getnframes())


@pytest.mark.parametrize("codec", list(Codec))
def test_round_trip_snr_on_real_speech(codec: Codec, shared_data: Path, fsdd_manifest) -> None:
    # jackson and george are 16-bit recordings; nicolas's are 8-bit sources (multiples of 256),
    # which A-law quantises unusually, so they would not measure G.711 itself.
    files = [r["audio"] for r in fsdd_manifest if r["speaker"] in ("jackson", "george")][::20]
    pcm = b"".join(_read_wav(shared_data / "fsdd" / name) for name in files)
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    y = np.frombuffer(codec.decode(codec.encode(pcm)), dtype="<i2").astype(np.float64)
    snr_db = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
    assert 35.0 <= snr_db <= 38.5, f"{codec.name} SNR {snr_db:.1f} dB"


def test_codec_metadata() -> None:
    assert (Codec.PCMU.payload_type, Codec.PCMU.encoding_name) == (0, "PCMU")
    assert (Codec.PCMA.payload_type, Codec.PCMA.encoding_name) == (8, "PCMA")


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("PCMU", Codec.PCMU),
        ("pcmu", Codec.PCMU),
        ("ulaw", Codec.PCMU),
        ("mu-law", Codec.PCMU),
        ("PCMA", Codec.PCMA),
        ("alaw", Codec.PCMA),
        ("a-law", Codec.PCMA),
    ],
)
def test_from_name(name: str, codec: Codec) -> None:
    assert Codec.from_name(name) is codec


def test_from_name_rejects_other_codecs() -> None:
    with pytest.raises(ValueError, match=r"unsupported codec 'opus': .* PCMU or PCMA"):
        Codec.from_name("opus")


def test_odd_length_pcm_is_rejected() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        Codec.PCMU.encode(b"\x00\x00\x00")
