"""Call events for dashboards: a bounded hand-off from call threads to one publishing thread.

Call threads must never wait on Redis for a dashboard, so `offer` only puts the event on a
bounded queue; the publisher thread encodes and sends them in batches. What does not fit, or
cannot be sent while Redis is down, is dropped and counted: never buffered without bound, and
never logged one by one (an outage would flood the log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import threading

from app.call.events import CallEvent

DEFAULT_QUEUE_SIZE = 1000


def encode(event: CallEvent, node: str) -> str:
    """One JSON message: `{"type": <event class>, "node": ..., "call_id": ..., ...fields}`.

    Transcripts, prompts and variable values travel as the bus delivers them: PII redaction is
    the bus's job (its `transform`), so what reaches the channel is what the records hold."""
    fields = dataclasses.asdict(event)
    return json.dumps({"type": type(event).__name__, "node": node, **fields}, default=str)


class EventQueue:
    """Events waiting to be published, with the counters a health report shows."""

    def __init__(self, maxsize: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue: queue.Queue[CallEvent | None] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._published = 0
        self._dropped = 0

    def offer(self, event: CallEvent) -> None:
        """Queue an event without ever blocking; a full queue drops it."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.count_dropped(1)

    def take(self, timeout: float, max_items: int = 200) -> list[CallEvent]:
        """Wait up to `timeout` for events, then return what is queued (at most `max_items`)."""
        events: list[CallEvent] = []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                if item is not None:  # None: put by `wake`, not an event
                    events.append(item)
                if len(events) >= max_items:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return events

    def wake(self) -> None:
        """Interrupt a `take` that is waiting (best effort: a full queue is not waiting)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def count_published(self, n: int) -> None:
        with self._lock:
            self._published += n

    def count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def counters(self) -> tuple[int, int]:
        """(published, dropped) so far."""
        with self._lock:
            return self._published, self._dropped
