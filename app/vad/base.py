"""The voice-activity interface every engine implements, and the factory that picks one.

A detector answers one question per 20 ms frame of 16-bit mono PCM: is the caller speaking?
Turn-level logic (minimum speech, end-of-turn silence, pre-roll) stays in the endpointer, so
engines stay swappable. A detector belongs to one call and is used by one thread at a time;
heavy resources (a model) are shared by the engine module behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from app.media.audio import frame_bytes

VAD_RATES = (8000, 16000, 32000, 48000)
"""Sample rates every engine accepts (webrtcvad's set; Silero resamples to 16 kHz)."""

KINDS = ("webrtc", "silero")
"""Engine names `create_detector` knows."""


class VadError(RuntimeError):
    """An engine could not be created (missing package, missing model); the message says why."""


@runtime_checkable
class VoiceDetector(Protocol):
    """Per-frame speech/non-speech decisions for one audio stream."""

    name: str
    sample_rate: int

    def is_speech(self, frame: bytes) -> bool:
        """Decide one 20 ms frame at `sample_rate`; ValueError when it is not exactly 20 ms."""
        ...

    def reset(self) -> None:
        """Forget all history, as if newly created (between turns or calls)."""
        ...


def check_rate(sample_rate: int) -> None:
    """Reject rates no engine supports, at construction rather than on the first frame."""
    if sample_rate not in VAD_RATES:
        raise ValueError(f"sample_rate must be one of {VAD_RATES}, got {sample_rate!r}")


def check_frame(frame: bytes, sample_rate: int) -> None:
    """A frame of the wrong size means a framing bug upstream: fail loudly, never guess."""
    expected = frame_bytes(sample_rate)
    if len(frame) != expected:
        raise ValueError(
            f"VAD frame must be 20 ms of 16-bit mono PCM at {sample_rate} Hz "
            f"({expected} bytes), got {len(frame)} bytes"
        )


def create_detector(
    kind: str,
    sample_rate: int = 8000,
    aggressiveness: int = 2,
    threshold: float = 0.5,
    *,
    model_path: str | Path | None = None,
) -> VoiceDetector:
    """Build a detector by engine name.

    `aggressiveness` (0-3) applies to webrtc only; `threshold` (speech probability) and
    `model_path` (default: the model bundled with faster-whisper) to silero only.
    """
    if kind == "webrtc":
        from app.vad.webrtc import WebRtcDetector

        return WebRtcDetector(sample_rate, aggressiveness)
    if kind == "silero":
        from app.vad.silero import SileroDetector

        return SileroDetector(sample_rate, threshold, model_path=model_path)
    raise VadError(f"unknown VAD engine {kind!r}: choose one of {', '.join(KINDS)}")
