"""Keys the caller pressed, from the SIP side (RFC 4733 events or SIP INFO) to the call worker.

The SIP thread pushes keys; the worker reads them while it listens. Keys pressed during a
prompt stay queued (type-ahead) until a question takes them, so "0" pressed during a long
announcement still reaches the next question.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from app.dialog.actions import DTMF_KEYS, DtmfInput, DtmfOptions

MAX_QUEUED_KEYS = 64


class DtmfBuffer:
    """A bounded, thread-safe queue of keys; `on_key` runs on the pushing thread (keep it tiny)."""

    def __init__(self, on_key: Callable[[], None] | None = None) -> None:
        self._keys: deque[str] = deque(maxlen=MAX_QUEUED_KEYS)
        self._cond = threading.Condition()
        self._on_key = on_key
        self._swallow: tuple[str, float] | None = None
        self.ignored = 0

    def push(self, key: str) -> None:
        """Queue one key; anything that is not a DTMF key is counted and dropped."""
        key = key.upper()
        if len(key) != 1 or key not in DTMF_KEYS:
            self.ignored += 1
            return
        with self._cond:
            swallow, self._swallow = self._swallow, None
            if swallow is not None and key == swallow[0] and time.monotonic() < swallow[1]:
                return  # the habitual terminator after an answer that was already complete
            self._keys.append(key)
            self._cond.notify_all()
        if self._on_key is not None:
            self._on_key()

    def pending(self) -> bool:
        return bool(self._keys)

    def swallow_next(self, key: str, within_s: float) -> None:
        """Drop `key` if it is the next key, queued already or pressed within `within_s`:
        "1234#" for a 4-digit PIN must not leave a "#" to answer the next question."""
        with self._cond:
            if self._keys:
                if self._keys[0] == key:
                    self._keys.popleft()
                return
            self._swallow = (key, time.monotonic() + within_s)

    def clear(self) -> None:
        with self._cond:
            self._keys.clear()

    def get(self, timeout: float) -> str | None:
        """The next key, waiting up to `timeout` seconds; None if none came."""
        with self._cond:
            if not self._keys:
                self._cond.wait(timeout)
            return self._keys.popleft() if self._keys else None


class KeyCollector:
    """Builds one answer from keys: stops at the terminator, at `max_digits`, or after
    `inter_digit_ms` without a key."""

    def __init__(self, options: DtmfOptions) -> None:
        self.options = options
        self.digits = ""
        self._last_key_at: float | None = None
        self.done: DtmfInput | None = None

    @property
    def started(self) -> bool:
        return self._last_key_at is not None

    def add(self, key: str, now: float | None = None) -> DtmfInput | None:
        if self.done is not None:
            return self.done
        self._last_key_at = time.monotonic() if now is None else now
        if self.options.terminator is not None and key == self.options.terminator:
            self.done = DtmfInput(self.digits, terminated=True)
        else:
            self.digits += key
            if len(self.digits) >= self.options.max_digits:
                self.done = DtmfInput(self.digits)
        return self.done

    def check_timeout(self, now: float | None = None) -> DtmfInput | None:
        """The answer so far once the caller stopped pressing keys for `inter_digit_ms`."""
        if self.done is None and self._last_key_at is not None:
            now = time.monotonic() if now is None else now
            if (now - self._last_key_at) * 1000 >= self.options.inter_digit_ms:
                self.done = DtmfInput(self.digits)
        return self.done
