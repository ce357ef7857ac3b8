"""The call-record observer: takes call events on the call's thread, writes them on its own.

Three stages, so a slow or unreachable database never delays a call and a crash loses at most
the event in flight:

1. `on_call_event` (call threads) only appends to a bounded in-memory queue.
2. The journal thread moves queued events to the spool on disk (`app.store.spool`) in
   batches, giving each a sequence number, and fsyncs. This takes milliseconds; the queue only
   fills if the disk itself stalls, and then events go to `overflow` (counted, logged once).
3. The database thread replays the spool from its checkpoint, in order, one transaction per
   batch, and advances the checkpoint. While the database is unreachable it retries with
   exponential backoff (one warning per outage) and the spool grows; events the database
   rejects (bad data) are isolated, logged and passed over so the rest lands.

Writes are upserts keyed by call id, turn index and event sequence number (`app.store.apply`),
so a replay after a crash, or a batch retried after a failed commit, never duplicates a row.
A backlog left in the spool at shutdown is replayed at the next start.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from app.call.events import CallEvent
from app.store.apply import apply_event
from app.store.db import create_schema, error_reason, open_engine
from app.store.migrate import SchemaError
from app.store.spool import Position, Record, Spool

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
        spool_dir: Path,
        queue_size: int = 10_000,
        batch_size: int = 200,
        max_backoff_s: float = 5.0,
        migrate: str = "auto",
        overflow: Callable[[CallEvent], None] | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or max_backoff_s <= 0:
            raise ValueError("queue_size, batch_size and max_backoff_s must be positive")
        self.node = node
        self.engine: Engine = open_engine(url)
        self.spool = Spool(spool_dir)
        self._url = self.engine.url.render_as_string(hide_password=True)
        self._batch_size = batch_size
        self._max_backoff_s = max_backoff_s
        self._migrate = migrate
        self._overflow = overflow or self._drop
        self._queue: queue.Queue[CallEvent] = queue.Queue(maxsize=queue_size)
        self._seq = itertools.count(max(time.time_ns() // 1000, self.spool.last_seq + 1))
        self._cond = threading.Condition()
        self._backlog = self.spool.pending  # left by an earlier run: replayed first
        self._enqueued = 0  # events accepted into the queue
        self._done = 0  # records off the spool: written, or rejected by the database
        self._dropped = 0
        self._overflowing = False
        self._schema_ready = False
        self._outage_since: float | None = None
        self._stop = threading.Event()  # no more events: exit once everything is written
        self._abandon = threading.Event()  # stop retrying: shutdown ran out of time
        self._threads: list[threading.Thread] = []
        self._closed = False
        if self._backlog:
            log.warning(
                "call-record spool %s holds %d record(s) from an earlier run; replaying them",
                spool_dir,
                self._backlog,
            )

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
        """Start the journal and database threads; the database may still be down."""
        if self._threads:
            raise RuntimeError("call recorder already started")
        self._threads = [
            threading.Thread(target=self._journal, name="call-record-spool", daemon=True),
            threading.Thread(target=self._replay, name="call-record-db", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every event queued before this call is in the database (or rejected by it
        and logged); False on timeout."""
        with self._cond:
            target = self._backlog + self._enqueued
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to `timeout`), then stop. What the database has not taken
        by then stays in the spool, on disk, for the next start."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        flushed = bool(self._threads) and self.flush(timeout)
        self._stop.set()
        if not flushed:
            self._abandon.set()
        for thread in self._threads:
            thread.join(max(0.5, deadline - time.monotonic()))
        if self.spool.pending:
            log.warning(
                "call recorder closing with %d record(s) not yet in %s: kept in the spool %s "
                "and written at the next start",
                self.spool.pending,
                self._url,
                self.spool.directory,
            )
        if self._queue.qsize():
            log.error("call recorder closing with %d event(s) not spooled", self._queue.qsize())
        self.spool.close()
        self.engine.dispose()

    @property
    def pending(self) -> int:
        """Events queued or spooled, not yet in the database."""
        with self._cond:
            return self._backlog + self._enqueued - self._done

    @property
    def spool_depth(self) -> int:
        """Records on disk waiting for the database."""
        return self.spool.pending

    @property
    def dropped(self) -> int:
        """Events refused because the queue was full."""
        return self._dropped

    @property
    def degraded(self) -> bool:
        """True while the database is unreachable (records are kept in the spool)."""
        return self._outage_since is not None

    @property
    def accepting(self) -> bool:
        """Events are kept, in the database or (while it is down) the spool: started, not
        closed, threads running, and not dropping events because the spool cannot keep up.
        What readiness asks of the store."""
        threads = self._threads
        return (
            bool(threads)
            and not self._closed
            and not self._overflowing
            and all(thread.is_alive() for thread in threads)
        )

    # -- journal thread: queue -> spool --------------------------------------------------------

    def _journal(self) -> None:
        delay = 0.1
        batch: list[tuple[int, CallEvent]] = []
        while True:
            if not batch:
                batch = [(next(self._seq), event) for event in self._take_batch()]
                if not batch:
                    if self._stop.is_set():
                        return
                    continue
            try:
                self.spool.append(batch)
            except OSError as exc:  # disk full or failing: keep the batch, the queue fills
                log.error("call-record spool %s: cannot write: %s", self.spool.directory, exc)
                if self._abandon.wait(delay):
                    return
                delay = min(delay * 2, self._max_backoff_s)
                continue
            delay = 0.1
            batch = []
            with self._cond:
                self._cond.notify_all()
                overflow_over = self._overflowing and self._queue.qsize() < self._queue.maxsize // 2
                if overflow_over:
                    self._overflowing = False
            if overflow_over:
                log.warning("call-record queue drained; %d event(s) lost so far", self._dropped)

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

    # -- database thread: spool -> database ----------------------------------------------------

    def _replay(self) -> None:
        delay = 0.1
        while not self._abandon.is_set():
            records, end, skipped = self.spool.read(self._batch_size)
            if not records and not skipped:
                if self._stop.is_set() and self._queue.empty() and self.spool.pending == 0:
                    return
                with self._cond:
                    self._cond.wait(_POLL_S)
                continue
            try:
                self._ensure_schema()
                self._commit(records)
            except (SQLAlchemyError, SchemaError) as exc:
                # Bad data is isolated record by record; anything else (down, busy, a schema
                # that cannot be made or checked yet) keeps every record and retries.
                if self._schema_ready and isinstance(exc, SQLAlchemyError) and not _transient(exc):
                    self._write_one_by_one(records)
                else:
                    self._outage(exc)
                    if self._abandon.wait(delay):
                        return
                    delay = min(delay * 2, self._max_backoff_s)
                    continue
            self._recovered()
            delay = 0.1
            self._advance(end, len(records) + skipped)

    def _advance(self, end: Position, count: int) -> None:
        self.spool.commit(end, count)
        with self._cond:
            self._done += count
            self._cond.notify_all()

    def _write_one_by_one(self, records: list[Record]) -> None:
        """Isolate a record the database rejects (bad data), so the rest of the batch lands;
        when the database goes away meanwhile, retry the rest until it is back."""
        for record in records:
            delay = 0.1
            while True:
                try:
                    self._commit([record])
                except SQLAlchemyError as exc:
                    if _transient(exc):
                        self._outage(exc)
                        if self._abandon.wait(delay):
                            return
                        delay = min(delay * 2, self._max_backoff_s)
                        continue
                    log.error(
                        "call record %s for %s rejected by the database, not retried: %s",
                        _kind(record.event),
                        _id(record.event),
                        error_reason(exc),
                    )
                break

    def _commit(self, records: list[Record]) -> None:
        with Session(self.engine) as session, session.begin():
            for record in records:
                apply_event(session, record.event, self.node, record.seq)

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            create_schema(self.engine, self._migrate)
            self._schema_ready = True

    def _outage(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "call-record database %s unavailable, keeping records in the spool and "
                "retrying: %s",
                self._url,
                error_reason(exc),
            )

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "call-record database %s reachable again after %.1f s; replaying %d spooled "
                "record(s)",
                self._url,
                time.monotonic() - self._outage_since,
                self.spool.pending,
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


def _kind(event: CallEvent) -> str:
    return type(event).__name__


def _id(event: CallEvent) -> str:
    return getattr(event, "call_id", "?")
