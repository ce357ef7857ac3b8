"""Liveness and readiness: the answers behind /livez and /readyz.

Liveness is "the loops still turn": each loop that matters (the SIP loop, the main loop) beats
a `Heartbeat`; one not seen for its `stale_after_s` means the process is stuck and should be
restarted. Readiness is "send me calls": named checks that must all pass, and not draining.
Both are plain objects so the systemd watchdog and graceful drain can share them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.server import Server

Clock = Callable[[], float]
Check = Callable[[], str | None]
"""A readiness check: None when it passes, else what is wrong (a short sentence)."""


class Heartbeat:
    """One loop's last sign of life. `beat()` is one attribute store: cheap enough for a loop
    turning every 10 ms. A new heartbeat counts as fresh, so start-up gets its full grace."""

    def __init__(self, name: str, stale_after_s: float, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age_s(self) -> float:
        return max(0.0, self._clock() - self._last)

    @property
    def alive(self) -> bool:
        return self.age_s() <= self.stale_after_s


def chain(*beats: Callable[[], None] | None) -> Callable[[], None] | None:
    """One heartbeat callable calling each given one in order (None ones left out), so several
    watchers (our liveness, the systemd watchdog) can share one loop's `heartbeat` hook."""
    given = [beat for beat in beats if beat is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]

    def beat_all() -> None:
        for beat in given:
            beat()

    return beat_all


class Liveness:
    """The heartbeats of the loops the process cannot live without."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, Heartbeat] = {}

    def heartbeat(self, name: str, stale_after_s: float = 5.0) -> Heartbeat:
        beat = Heartbeat(name, stale_after_s, self._clock)
        self._beats[name] = beat
        return beat

    def report(self) -> tuple[bool, dict[str, object]]:
        """(alive, a JSON-able body naming each loop with the age of its last beat)."""
        loops = {
            name: {"ok": beat.alive, "age_s": round(beat.age_s(), 3)}
            for name, beat in self._beats.items()
        }
        alive = all(loop["ok"] for loop in loops.values())
        return alive, {"alive": alive, "loops": loops}


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


class Readiness:
    """Named checks, all of which must pass, plus a draining flag.

    Graceful drain calls `set_draining()` (or passes `draining`, a callable read on every
    probe) so load balancers stop sending calls while the calls in progress finish."""

    def __init__(
        self, checks: dict[str, Check] | None = None, draining: Callable[[], bool] | None = None
    ) -> None:
        self._checks: dict[str, Check] = dict(checks or {})
        self._draining_source = draining
        self._draining = threading.Event()

    def set_draining(self, draining: bool = True) -> None:
        if draining:
            self._draining.set()
        else:
            self._draining.clear()

    @property
    def draining(self) -> bool:
        source = self._draining_source
        return self._draining.is_set() or (source is not None and bool(source()))

    def results(self) -> list[CheckResult]:
        results = [CheckResult(name, _run(check)) for name, check in self._checks.items()]
        results.append(
            CheckResult("draining", "draining: not taking new calls" if self.draining else None)
        )
        return results

    def report(self) -> tuple[bool, dict[str, object]]:
        """(ready, a JSON-able body naming each check; `failing` lists the ones that fail)."""
        results = self.results()
        failing = [result.name for result in results if not result.ok]
        checks = {
            result.name: {
                "ok": result.ok,
                **({"problem": result.problem} if result.problem else {}),
            }
            for result in results
        }
        return not failing, {"ready": not failing, "failing": failing, "checks": checks}


def _run(check: Check) -> str | None:
    """A check that raises fails with its error rather than breaking the probe."""
    try:
        return check()
    except Exception as exc:
        return f"check failed: {type(exc).__name__}: {exc}"


def server_checks(server: Server) -> dict[str, Check]:
    """What must hold before a server takes calls: SIP transports up, dialplans loaded,
    engines built, call records kept (in the database or, during an outage, the spool)."""

    def sip() -> str | None:
        return None if server.agent is not None else "SIP transports not started"

    def dialplans() -> str | None:
        return None if server.dialplans else "no dialplans loaded"

    def engines() -> str | None:
        missing = [name for name in ("asr", "tts") if getattr(server, name) is None]
        return f"engines not built: {', '.join(missing)}" if missing else None

    def store() -> str | None:
        if server.recorder.accepting:
            return None
        return "call records are not being kept (recorder closed or its spool cannot be written)"

    return {"sip": sip, "dialplans": dialplans, "engines": engines, "store": store}
