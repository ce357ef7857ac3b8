"""The live-state interface: in-process by default, Redis for several nodes.

Live state is an observer of call events (`app.call.events`) plus two questions asked at INVITE
time: how many calls are active now, and may this call take one of the cluster's slots
(`reserve`). A slot taken by `reserve` is a *reservation*: it counts like a call for a short
while (the call is being answered), `call_started` upgrades it to an active call, and
`call_ended` or `release` gives it back; one that is never upgraded nor given back (the node
died mid-INVITE) lapses on its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TypedDict

from app.call.events import CallEnded, CallEvent, CallStarted, StepEntered


@dataclass(frozen=True, slots=True)
class ActiveCall:
    call_id: str
    node: str
    dialplan: str
    step: str
    started_at: float
    from_uri: str
    to_uri: str


class StateStatus(TypedDict):
    """What a health report shows of the live state."""

    backend: str
    degraded: bool
    published: int
    dropped: int


class LiveState(ABC):
    """Registry of active calls. Methods are thread-safe and never raise on a backend outage."""

    backend = "abstract"

    def on_call_event(self, event: CallEvent) -> None:
        if isinstance(event, CallStarted):
            if event.answered_at is not None:  # a rejected INVITE never becomes an active call
                self.call_started(event)
        elif isinstance(event, StepEntered):
            self.step_entered(event.call_id, event.step)
        elif isinstance(event, CallEnded):
            self.call_ended(event.call_id)

    @abstractmethod
    def call_started(self, event: CallStarted) -> None:
        """The call was answered: it counts until it ends (its reservation, if any, becomes it)."""

    @abstractmethod
    def step_entered(self, call_id: str, step: str) -> None: ...

    @abstractmethod
    def call_ended(self, call_id: str) -> None:
        """The call is over: forget it, answered or only reserved."""

    @abstractmethod
    def reserve(self, call_id: str, limit: int) -> bool:
        """Take a slot for a call about to be answered if fewer than `limit` calls (answered or
        reserved) are active; True when taken or already held. `limit <= 0`: no cap, always
        True. The check and the taking are one atomic step, so racing INVITEs never exceed it."""

    @abstractmethod
    def release(self, call_id: str) -> None:
        """Give back the reservation of a call that will not be answered. Leaves an answered
        call alone, so callers may release on any path that drops an INVITE."""

    @abstractmethod
    def active_calls(self) -> list[ActiveCall]:
        """Answered calls (reservations are not calls yet: they have no details to show)."""

    @abstractmethod
    def active_count(self) -> int:
        """Answered calls plus live reservations: what the concurrent-call cap counts."""

    @property
    def degraded(self) -> bool:
        """True while a shared backend is unreachable and answers cover this node only."""
        return False

    def status(self) -> StateStatus:
        """Backend, outage flag and event-publication counters, for health reporting."""
        return {"backend": self.backend, "degraded": self.degraded, "published": 0, "dropped": 0}

    def start(self) -> None:  # noqa: B027 - backends without background work have nothing to start
        """Start background work (the Redis heartbeat and event publisher)."""

    def close(self) -> None:  # noqa: B027 - backends without connections have nothing to close
        """Stop background work and release connections."""
