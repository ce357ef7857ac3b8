"""The call-record observer: takes call events on the call's thread, writes them on its own.

`on_call_event` only appends to a bounded queue, so a slow or unreachable database never
delays a call. One writer thread drains the queue in order, in batches, one transaction per
batch. When the database is unreachable the writer keeps the batch, retries with exponential
backoff and logs one warning per outage; events keep queueing behind it, in order. When the queue
is full, events go to `overflow` (by default: counted and logged as lost); a disk spool will
plug in there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from app.call.events import CallEvent
from app.store.apply import apply_event
from app.store.db import create_schema, open_engine

log = logging.getLogger(__name__)

__all__ = ["CallRecorder", "open_engine"]

_POLL_S = 0.2


class CallRecorder:
    """Writes call events to the call-record database without ever blocking the caller."""

    def __init__(
        self,
        url: str,
        node: str,
        *,
        queue_size: int = 10_000,
        batch_size: int = 200,
        max_backoff_s: float = 5.0,
        overflow: Callable[[CallEvent], None] | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or max_backoff_s <= 0:
            raise ValueError("queue_size, batch_size and max_backoff_s must be positive")
        self.node = node
        self.engine: Engine = open_engine(url)
        self._url = self.engine.url.render_as_string(hide_password=True)
        self._batch_size = batch_size
        self._max_backoff_s = max_backoff_s
        self._overflow = overflow or self._drop
        self._queue: queue.Queue[CallEvent] = queue.Queue(maxsize=queue_size)
        self._cond = threading.Condition()
        self._enqueued = 0  # events accepted into the queue
        self._done = 0  # events taken off it and written (or given up on)
        self._dropped = 0
        self._overflowing = False
        self._schema_ready = False
        self._outage_since: float | None = None
        self._stop = threading.Event()  # no more events; exit once the queue is empty
        self._abandon = threading.Event()  # stop retrying: shutdown ran out of time
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the call side: never blocks ---------------------------------------------------------

    def on_call_event(self, event: CallEvent) -> None:
        """Queue `event` for writing; returns at once whatever state the database is in."""
        if self._closed:
            self._overflow(event)  # too late to queue: counted and logged like an overflow
            return
        with self._cond:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                full = True
            else:
                full = False
                self._enqueued += 1
        if full:
            self._overflow(event)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread; the database may still be down, the writer waits for it."""
        if self._thread is not None:
            raise RuntimeError("call recorder already started")
        self._thread = threading.Thread(target=self._run, name="call-recorder", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every event queued before this call is written (or rejected by the database
        and logged); False on timeout."""
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to `timeout`), then stop the writer and release connections."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        flushed = self._thread is not None and self.flush(timeout)
        self._stop.set()
        if not flushed:
            self._abandon.set()
            if self.pending:
                log.error(
                    "call recorder closing with %d event(s) not written to %s",
                    self.pending,
                    self._url,
                )
        if self._thread is not None:
            self._thread.join(max(0.5, deadline - time.monotonic()))
        self.engine.dispose()

    @property
    def pending(self) -> int:
        """Events queued or being written, not yet in the database."""
        with self._cond:
            return self._enqueued - self._done

    @property
    def dropped(self) -> int:
        """Events refused because the queue was full."""
        return self._dropped

    @property
    def degraded(self) -> bool:
        """True while the database is unreachable."""
        return self._outage_since is not None

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stop.is_set():
                    return
                continue
            self._write(batch)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()
                overflow_over = self._overflowing and self._queue.qsize() < self._queue.maxsize // 2
                if overflow_over:
                    self._overflowing = False
            if overflow_over:
                log.warning("call-record queue drained; %d event(s) lost so far", self._dropped)
            if self._abandon.is_set():
                return

    def _take_batch(self) -> list[CallEvent]:
        try:
            batch = [self._queue.get(timeout=_POLL_S)]
        except queue.Empty:
            return []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[CallEvent]) -> None:
        """Write `batch` in order, retrying while the database is unreachable."""
        delay = 0.1
        while True:
            try:
                self._ensure_schema()
                self._commit(batch)
            except SQLAlchemyError as exc:
                if not _transient(exc):
                    self._write_one_by_one(batch)
                    self._recovered()
                    return
                self._outage(exc)
                if self._abandon.wait(delay):
                    return
                delay = min(delay * 2, self._max_backoff_s)
                continue
            self._recovered()
            return

    def _write_one_by_one(self, batch: list[CallEvent]) -> None:
        """Isolate an event the database rejects (bad data), so the rest of the batch lands."""
        for event in batch:
            try:
                self._commit([event])
            except SQLAlchemyError as exc:
                if _transient(exc):  # went down meanwhile: back to the retrying path
                    self._write([event])
                else:
                    log.error(
                        "call record %s for %s rejected by the database, not retried: %s",
                        _kind(event),
                        _id(event),
                        exc,
                    )

    def _commit(self, events: list[CallEvent]) -> None:
        with Session(self.engine) as session, session.begin():
            for event in events:
                apply_event(session, event, self.node)

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            create_schema(self.engine)
            self._schema_ready = True

    def _outage(self, exc: SQLAlchemyError) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "call-record database %s unreachable, keeping events queued and retrying: %s",
                self._url,
                _short(exc),
            )

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "call-record database %s reachable again after %.1f s",
                self._url,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    def _drop(self, event: CallEvent) -> None:
        """Default overflow: count and log (once per overflow episode) the lost event."""
        with self._cond:
            self._dropped += 1
            first = not self._overflowing
            self._overflowing = True
        if first:
            reason = "recorder closed" if self._closed else f"queue full ({self._queue.maxsize})"
            log.error(
                "call-record %s: dropping %s for %s and later events until it drains",
                reason,
                _kind(event),
                _id(event),
            )


def _transient(exc: SQLAlchemyError) -> bool:
    """Worth retrying: the database is unreachable, busy or restarting, not rejecting the data."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _kind(event: CallEvent) -> str:
    return type(event).__name__


def _id(event: CallEvent) -> str:
    return getattr(event, "call_id", "?")
