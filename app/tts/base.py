"""The TTS interface every engine implements.

`synthesize` yields 16-bit mono PCM chunks at the engine's native `sample_rate` as they are
produced, so playback can start before the whole prompt is rendered. The call path resamples to
the call rate at its edge (`app.media.resample`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator


class TtsError(RuntimeError):
    """An engine could not synthesise; the message says why.

    `retry_after_s`: the engine said when to try again (a vendor's 429 Retry-After); a
    fallback chain keeps the engine's circuit open at least that long.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TtsEngine(ABC):
    """A synthesiser shared by calls; `synthesize` must be safe to call from several threads."""

    name: str = "tts"
    sample_rate: int = 22050

    @abstractmethod
    def synthesize(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        """Yield PCM chunks of `text` spoken in `voice` (the engine's default when None)."""

    def has_voice(self, voice: str) -> bool:
        """Whether `voice` names one of this engine's voices (a fallback chain gives a
        dialplan's voice only to engines that have it; the others speak in their own)."""
        return True
