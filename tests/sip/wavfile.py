"""16-bit mono WAV read/write for the SIP harness (the stdlib `wave`, checked formats)."""

from __future__ import annotations

import wave
from pathlib import Path

from app.media.audio import SAMPLE_WIDTH


def read_wav(path: Path) -> tuple[bytes, int]:
    """(16-bit mono PCM, sample rate) of a WAV file; anything else is a clear error."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != SAMPLE_WIDTH:
            raise ValueError(
                f"{path}: need mono 16-bit PCM, got {wav.getnchannels()} channel(s) of "
                f"{8 * wav.getsampwidth()} bit"
            )
        return wav.readframes(wav.getnframes()), wav.getframerate()


def write_wav(path: Path, pcm: bytes, rate: int) -> Path:
    """Write 16-bit mono PCM as a WAV file and return its path."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path
