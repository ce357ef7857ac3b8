"""Live state in this process: enough for a single node, and Redis's fallback when it is down."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from app.call.events import CallStarted
from app.state.base import ActiveCall, LiveState

DEFAULT_RESERVATION_S = 10.0


class MemoryState(LiveState):
    """Active calls and reservations of this node in dicts behind one lock.

    Reservations expire on the monotonic clock after `reservation_s`, so an INVITE whose
    outcome was never reported does not hold its slot forever.
    """

    backend = "memory"

    def __init__(self, node: str, *, reservation_s: float = DEFAULT_RESERVATION_S) -> None:
        self.node = node
        self._reservation_s = reservation_s
        self._calls: dict[str, ActiveCall] = {}
        self._held: dict[str, float] = {}  # call id -> monotonic deadline of its reservation
        self._lock = threading.Lock()

    def call_started(self, event: CallStarted) -> None:
        call = ActiveCall(
            call_id=event.call_id,
            node=self.node,
            dialplan=event.dialplan,
            step="",
            started_at=event.started_at,
            from_uri=event.from_uri,
            to_uri=event.to_uri,
        )
        with self._lock:
            self._held.pop(event.call_id, None)
            self._calls[event.call_id] = call

    def step_entered(self, call_id: str, step: str) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is not None:  # a step after the end (or for another node's call) is moot
                self._calls[call_id] = replace(call, step=step)

    def call_ended(self, call_id: str) -> None:
        self.forget(call_id)

    def reserve(self, call_id: str, limit: int) -> bool:
        if limit <= 0:
            return True
        with self._lock:
            self._drop_lapsed()
            if call_id in self._calls or call_id in self._held:
                return True
            if len(self._calls) + len(self._held) >= limit:
                return False
            self._held[call_id] = time.monotonic() + self._reservation_s
            return True

    def release(self, call_id: str) -> None:
        self.unhold(call_id)

    def get(self, call_id: str) -> ActiveCall | None:
        with self._lock:
            return self._calls.get(call_id)

    def active_calls(self) -> list[ActiveCall]:
        with self._lock:
            return sorted(self._calls.values(), key=lambda c: (c.started_at, c.call_id))

    def active_count(self) -> int:
        with self._lock:
            self._drop_lapsed()
            return len(self._calls) + len(self._held)

    # -- for RedisState, which keeps its node's truth here ----------------------------------

    def hold(self, call_id: str) -> None:
        """Reserve without checking a limit: Redis has counted the cluster already."""
        with self._lock:
            if call_id not in self._calls:
                self._held[call_id] = time.monotonic() + self._reservation_s

    def unhold(self, call_id: str) -> bool:
        """Drop a reservation; True if there was one (an answered call is left alone)."""
        with self._lock:
            return self._held.pop(call_id, None) is not None

    def forget(self, call_id: str) -> bool:
        """Drop a call or reservation; True if this node knew it."""
        with self._lock:
            call = self._calls.pop(call_id, None)
            held = self._held.pop(call_id, None)
            return call is not None or held is not None

    def ids(self) -> set[str]:
        """Ids of every call and live reservation of this node."""
        with self._lock:
            self._drop_lapsed()
            return set(self._calls) | set(self._held)

    def _drop_lapsed(self) -> None:
        """Forget reservations past their deadline (caller holds the lock)."""
        now = time.monotonic()
        for call_id in [c for c, deadline in self._held.items() if deadline <= now]:
            del self._held[call_id]
