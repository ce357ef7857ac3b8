"""Keeping a failing engine away from calls: a circuit breaker and a bounded slot per engine.

A fallback chain (`app.asr.fallback`, `app.tts.fallback`) asks each engine's `EngineGuard`
before it gives the engine a turn. The guard says no, with the reason recorded on the turn,
when the engine's circuit is open (it failed `failures` times in a row; it gets one probe
after `cooldown_s`, or after the vendor's Retry-After when that is longer) or when the engine
already serves `max_streams` turns (an overloaded engine sheds to the next one instead of
queueing). A slot is held until the engine's worker thread returns, so an engine that hangs
keeps its slots and stops getting new work even before its circuit opens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class CircuitBreaker:
    """Closed (engine used), open (skipped until the cool-down ends), half-open (one probe).

    Thread-safe. `clock` is injectable for tests.
    """

    def __init__(
        self, name: str, failures: int = 3, cooldown_s: float = 30.0, clock: Clock = time.monotonic
    ) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(f"failures >= 1 and cooldown_s > 0, got {failures}, {cooldown_s}")
        self.name = name
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._last_error = ""
        self.failures_total = 0
        """Every failure since start, for metrics (`_failures` resets on success)."""

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self._clock() >= self._open_until else "open"

    def allow(self) -> str | None:
        """None when the engine may take a turn; else why not. A half-open circuit lets exactly
        one caller through as the probe; its `success()` or `failure()` decides."""
        with self._lock:
            if self._open_until is None:
                return None
            wait = self._open_until - self._clock()
            if wait > 0:
                return f"circuit open for {wait:.0f} s more (last error: {self._last_error})"
            if self._probing:
                return "circuit half-open, a probe turn is under way"
            self._probing = True
            return None

    def success(self) -> None:
        with self._lock:
            was_open = self._open_until is not None
            self._failures, self._open_until, self._probing = 0, None, False
        if was_open:
            log.info("%s recovered: circuit closed", self.name)

    def no_verdict(self) -> None:
        """The turn ended without telling (the caller hung up): let another turn probe."""
        with self._lock:
            self._probing = False

    def failure(self, error: str, retry_after_s: float | None = None) -> None:
        with self._lock:
            self._failures += 1
            self.failures_total += 1
            self._last_error = error
            probe_failed = self._probing
            self._probing = False
            if not probe_failed and self._failures < self.threshold and retry_after_s is None:
                return
            pause = max(self.cooldown_s, retry_after_s or 0.0)
            self._open_until = self._clock() + pause
            failures = self._failures
        log.warning(
            "%s failed %d time(s), circuit open for %.0f s: %s", self.name, failures, pause, error
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Seconds a chain waits for an engine, and turns it serves at once (0: no limit)."""

    first_result_s: float = 1.5
    final_s: float = 2.0
    max_streams: int = 0


class EngineGuard:
    """One engine's place in a chain: its breaker, its limits and its bounded slots."""

    def __init__(self, name: str, limits: Limits, breaker: CircuitBreaker) -> None:
        self.name = name
        self.limits = limits
        self.breaker = breaker
        self._slots = threading.BoundedSemaphore(limits.max_streams) if limits.max_streams else None

    def admit(self) -> str | None:
        """Take a slot for one turn (None) or say why the engine is skipped."""
        if self._slots is not None and not self._slots.acquire(blocking=False):
            return f"busy: already serving its limit of {self.limits.max_streams}"
        reason = self.breaker.allow()
        if reason is not None:
            self.release()
        return reason

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()


def short_error(exc: BaseException) -> str:
    """An exception as one short line for a turn's record: type and first line of message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
