"""Sample-rate conversion at the engine edges (TTS 22.05 kHz -> 8 kHz, 8 kHz -> ASR 16 kHz).

Built on libsoxr (python-soxr): band-limited, so speech resampled to 8 kHz does not alias and a
telephone signal upsampled for ASR gains no images. `Resampler` keeps the filter state between
chunks, so a stream converted piece by piece has no clicks at chunk boundaries; `resample` is
the one-shot form for whole buffers.
"""

from __future__ import annotations

import numpy as np
import soxr

from app.media.audio import SAMPLE_WIDTH

QUALITY = "HQ"
"""libsoxr's 'high quality' preset: 20-bit precision, low latency, cheap enough for realtime."""


def _check(in_rate: int, out_rate: int) -> None:
    for name, rate in (("in_rate", in_rate), ("out_rate", out_rate)):
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            raise ValueError(f"{name} must be a positive integer sample rate, got {rate!r}")


def _samples(pcm: bytes) -> np.ndarray:
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(
            f"PCM must be 16-bit samples: got {len(pcm)} bytes, not a multiple of {SAMPLE_WIDTH}"
        )
    return np.frombuffer(pcm, dtype="<i2")


class Resampler:
    """Streaming 16-bit mono converter for one direction of one call (or one prompt).

    Not thread-safe: one producer feeds it. `flush()` emits the filter's tail and readies the
    resampler for a new, unrelated stream.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        _check(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=QUALITY)

    def process(self, pcm: bytes) -> bytes:
        """Convert the next chunk; output lags input by the filter delay until `flush()`."""
        samples = _samples(pcm)
        if self._stream is None:
            return bytes(pcm)
        if not samples.size:
            return b""
        return self._stream.resample_chunk(samples).astype("<i2", copy=False).tobytes()

    def flush(self) -> bytes:
        """End of the stream: return the remaining output and reset for the next stream."""
        if self._stream is None:
            return b""
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream.clear()
        return tail.astype("<i2", copy=False).tobytes()


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Convert a whole buffer of 16-bit mono PCM from `in_rate` to `out_rate`."""
    _check(in_rate, out_rate)
    samples = _samples(pcm)
    if in_rate == out_rate:
        return bytes(pcm)
    if not samples.size:
        return b""
    out = soxr.resample(samples, in_rate, out_rate, quality=QUALITY)
    return out.astype("<i2", copy=False).tobytes()
