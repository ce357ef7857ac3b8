"""Live state in this process: enough for a single node, and Redis's fallback when it is down."""

from __future__ import annotations

import threading
from dataclasses import replace

from app.call.events import CallStarted
from app.state.base import ActiveCall, LiveState


class MemoryState(LiveState):
    """Active calls of this node in a dict behind a lock."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._calls: dict[str, ActiveCall] = {}
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
            self._calls[event.call_id] = call

    def step_entered(self, call_id: str, step: str) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is not None:  # a step after the end (or for another node's call) is moot
                self._calls[call_id] = replace(call, step=step)

    def call_ended(self, call_id: str) -> None:
        with self._lock:
            self._calls.pop(call_id, None)

    def get(self, call_id: str) -> ActiveCall | None:
        with self._lock:
            return self._calls.get(call_id)

    def active_calls(self) -> list[ActiveCall]:
        with self._lock:
            return sorted(self._calls.values(), key=lambda c: (c.started_at, c.call_id))

    def active_count(self) -> int:
        with self._lock:
            return len(self._calls)
