"""The bot's outgoing audio for one call: a bounded queue of 20 ms frames.

The call's worker thread writes prompts (any chunk size) and may block when the queue is full;
PJSIP's media clock thread reads one frame per tick and must never block, or every call on the
conference bridge stutters. So `read()` takes no lock: it pops from a deque (atomic in CPython)
and only *tries* to take the lock to wake a waiting writer. A wake-up it could not deliver is
picked up by the waiter's own 50 ms re-check, which keeps waits bounded without busy polling.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from app.media.audio import FRAME_MS, SAMPLE_WIDTH, frame_bytes

_RECHECK_S = 0.05
"""Longest a waiter sleeps before re-checking cancel/closed or a wake-up the reader missed."""


class PlayoutBuffer:
    """Frames waiting for the media clock; one writer thread, one reader thread."""

    def __init__(self, rate: int = 8000, max_seconds: float = 2.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be a positive sample rate, got {rate!r}")
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
        self.rate = rate
        self.frame_size = frame_bytes(rate)
        self.max_frames = max(1, round(max_seconds * 1000 / FRAME_MS))
        self._frames: deque[bytes] = deque()
        self._partial = bytearray()
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._generation = 0
        self._closed = False
        self._first_read_at: float | None = None
        self.frames_read = 0

    @property
    def pending_frames(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def first_read_at(self) -> float | None:
        """Epoch seconds the media clock took the first frame since `mark_prompt_start()`."""
        return self._first_read_at

    def mark_prompt_start(self) -> None:
        """A new prompt begins: the next frame read sets `first_read_at` again."""
        self._first_read_at = None

    def write(self, pcm: bytes, cancel: threading.Event | None = None) -> bool:
        """Queue `pcm` as 20 ms frames, waiting while the buffer is full.

        Returns True once all of it is queued (a partial frame is kept for the next write or
        `end_of_prompt()`), False if `cancel` was set, the buffer was closed, or `clear()`
        dropped this prompt while the write waited; the unqueued rest is then discarded.
        """
        if len(pcm) % SAMPLE_WIDTH:
            raise ValueError(f"PCM must be 16-bit samples: got {len(pcm)} bytes, an odd length")
        size = self.frame_size
        with self._cond:
            if self._closed or (cancel is not None and cancel.is_set()):
                return False
            generation = self._generation
            self._partial += pcm
            while len(self._partial) >= size:
                while len(self._frames) >= self.max_frames:
                    self._wait()
                    if (
                        self._closed
                        or generation != self._generation
                        or (cancel is not None and cancel.is_set())
                    ):
                        self._partial.clear()
                        return False
                self._frames.append(bytes(self._partial[:size]))
                del self._partial[:size]
        return True

    def end_of_prompt(self) -> None:
        """Pad the partial last frame with silence and queue it, so a prompt's tail is heard.

        Never waits: the buffer may exceed `max_frames` by this one frame.
        """
        with self._cond:
            if self._partial and not self._closed:
                self._partial += bytes(self.frame_size - len(self._partial))
                self._frames.append(bytes(self._partial))
            self._partial.clear()

    def read(self) -> bytes | None:
        """One frame for the media clock, or None when empty (send silence). Never blocks."""
        try:
            frame = self._frames.popleft()
        except IndexError:
            return None
        self.frames_read += 1
        if self._first_read_at is None:
            self._first_read_at = time.time()
        if self._waiters and self._cond.acquire(blocking=False):
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()
        return frame

    def clear(self) -> int:
        """Drop all pending audio (barge-in, hang-up); return the frames dropped.

        A write waiting for room returns False: its prompt is the one being dropped.
        """
        with self._cond:
            dropped = 0
            while True:
                try:
                    self._frames.popleft()
                except IndexError:
                    break
                dropped += 1
            self._partial.clear()
            self._generation += 1
            self._cond.notify_all()
        return dropped

    def wait_drained(
        self, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> bool:
        """Wait until every queued frame was read (the prompt has played out).

        Returns True when drained; False on timeout, when `cancel` is set, or when closed.
        A partial frame is not waited for: call `end_of_prompt()` first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._frames:
                if self._closed or (cancel is not None and cancel.is_set()):
                    return False
                remaining = _RECHECK_S
                if deadline is not None:
                    remaining = min(remaining, deadline - time.monotonic())
                    if remaining <= 0:
                        return False
                self._wait(remaining)
        return True

    def close(self) -> None:
        """The call is over: wake every waiter; later writes return False."""
        with self._cond:
            self._closed = True
            self._partial.clear()
            self._cond.notify_all()

    def _wait(self, seconds: float = _RECHECK_S) -> None:
        # Caller holds the lock. Counting waiters lets read() skip the lock when nobody waits.
        self._waiters += 1
        try:
            self._cond.wait(seconds)
        finally:
            self._waiters -= 1
