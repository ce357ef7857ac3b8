"""PCM framing constants and helpers shared by every stage.

All PCM in Switchboard is signed 16-bit little-endian mono. A call runs at 8 kHz (G.711's rate);
engines that want another rate resample at their own edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

SAMPLE_WIDTH = 2
"""Bytes per sample: signed 16-bit little-endian."""

FRAME_MS = 20
"""Duration of one media frame, as PJSIP and RTP use for G.711."""

CALL_RATE = 8000
"""Sample rate of the per-call core: G.711's rate, so the call path never resamples."""


def frame_samples(rate: int) -> int:
    """Samples in one 20 ms frame at `rate`."""
    return rate * FRAME_MS // 1000


def frame_bytes(rate: int) -> int:
    """Bytes in one 20 ms frame of 16-bit PCM at `rate`."""
    return frame_samples(rate) * SAMPLE_WIDTH


def pcm_duration(pcm_len: int, rate: int) -> float:
    """Seconds of audio in `pcm_len` bytes of 16-bit PCM at `rate`."""
    return pcm_len / (rate * SAMPLE_WIDTH)


def iter_frames(chunks: Iterable[bytes], rate: int, pad_last: bool = True) -> Iterator[bytes]:
    """Re-cut a stream of PCM chunks of any size into exact 20 ms frames.

    A last partial frame is padded with silence (or dropped when `pad_last` is false), so a
    consumer always gets whole frames.
    """
    size = frame_bytes(rate)
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % size
        for start in range(0, whole, size):
            yield bytes(pending[start : start + size])
        del pending[:whole]
    if pending and pad_last:
        yield bytes(pending) + b"\x00" * (size - len(pending))
