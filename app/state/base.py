"""The live-state interface: in-process by default, Redis for several nodes.

Live state is an observer of call events (`app.call.events`) plus one question asked at INVITE
time: how many calls are active now, to enforce the concurrent-call limit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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


class LiveState(ABC):
    """Registry of active calls. Methods are thread-safe and never raise on a backend outage."""

    def on_call_event(self, event: CallEvent) -> None:
        if isinstance(event, CallStarted):
            if event.answered_at is not None:  # a rejected INVITE never becomes an active call
                self.call_started(event)
        elif isinstance(event, StepEntered):
            self.step_entered(event.call_id, event.step)
        elif isinstance(event, CallEnded):
            self.call_ended(event.call_id)

    @abstractmethod
    def call_started(self, event: CallStarted) -> None: ...

    @abstractmethod
    def step_entered(self, call_id: str, step: str) -> None: ...

    @abstractmethod
    def call_ended(self, call_id: str) -> None: ...

    @abstractmethod
    def active_calls(self) -> list[ActiveCall]: ...

    @abstractmethod
    def active_count(self) -> int: ...

    def close(self) -> None:  # noqa: B027 - backends without connections have nothing to close
        """Release connections."""
