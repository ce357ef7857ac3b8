"""Call records: the recorder against real SQLite files and the real PostgreSQL server.

Outages here are real connections refused: for PostgreSQL the recorder connects through a local
TCP forwarder whose port is closed and reopened; for SQLite another connection holds the write
lock. (tests/test_store_drills.py stops the PostgreSQL server itself.)
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from app.call.events import (
    CallEnded,
    CallEvent,
    CallStarted,
    StepEntered,
    StepResult,
    TurnCompleted,
    VariableSet,
)
from app.store import CallRecorder, get_call, get_turns, open_engine
from app.store.models import Call, Event, Turn
from app.store.queries import get_events
from tests.conftest import PG_URL
from tests.tcp_proxy import ToggleProxy

_PG = make_url(PG_URL)  # from scripts/test-services, via the environment
PG_HOST, PG_PORT = _PG.host or "127.0.0.1", _PG.port or 5432
T0 = 1_700_000_000.0
LOGGER = "app.store.recorder"


# -- backends ----------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    url: str  # what the recorder uses (through the outage switch)
    reader: Engine  # direct access for assertions
    outage: Callable[[], contextlib.AbstractContextManager[None]]


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    try:
        with _pg_connect(connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} (database {_PG.database}): "
            f"{exc}. Start it before running the store tests."
        )


@pytest.fixture
def pg_schema(postgres_ready: None) -> Iterator[str]:
    """A private schema per test, so runs never see each other's rows."""
    schema = f"sb_test_{uuid.uuid4().hex[:12]}"
    with _pg_connect(autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with _pg_connect(autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _pg_connect(**kwargs: object) -> psycopg.Connection:
    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=_PG.username,
        password=_PG.password,
        dbname=_PG.database,
        **kwargs,
    )


def _pg_url(port: int, schema: str) -> str:
    url = _PG.set(port=port, query={"options": f"-csearch_path={schema}", "connect_timeout": "2"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "records" / "calls.db"

        @contextlib.contextmanager
        def locked() -> Iterator[None]:
            path.parent.mkdir(parents=True, exist_ok=True)
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("PRAGMA journal_mode=WAL")
            holder.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                holder.execute("ROLLBACK")
                holder.close()

        reader = open_engine(f"sqlite:///{path}")
        yield Backend("sqlite", f"sqlite:///{path}?timeout=0.05", reader, locked)
        reader.dispose()
        return

    schema = request.getfixturevalue("pg_schema")
    proxy = ToggleProxy((PG_HOST, PG_PORT))
    proxy.up()

    @contextlib.contextmanager
    def closed_port() -> Iterator[None]:
        proxy.down()
        try:
            yield
        finally:
            proxy.up()

    reader = open_engine(_pg_url(PG_PORT, schema))
    yield Backend("postgresql", _pg_url(proxy.port, schema), reader, closed_port)
    reader.dispose()
    proxy.down()


# -- events ------------------------------------------------------------------------------------


def call_events(call_id: str) -> list[CallEvent]:
    """A two-turn call: answered 0.5 s after start, ended at +30 s, hung up by the bot."""
    return [
        CallStarted(call_id, "sip:alice@example.com", "sip:bot@pbx", "1000", "banking", "PCMU",
                    T0, T0 + 0.5, "192.0.2.7:5060"),
        StepEntered(call_id, "welcome", T0 + 0.6),
        TurnCompleted(call_id, 0, "account", "Your account number?", "one two three", 0.91,
                      "pocketsphinx", "digits", T0 + 5.0, T0 + 5.25, T0 + 5.6, result="matched"),
        VariableSet(call_id, "account", "account", "123", T0 + 5.3),
        VariableSet(call_id, "account", "userfield", "vip", T0 + 5.3),
        StepResult(call_id, "lookup", "webhook", True, "", T0 + 5.5),
        StepEntered(call_id, "pin", T0 + 5.6),
        TurnCompleted(call_id, 1, "pin", "Your PIN?", "four five", 0.8,
                      "pocketsphinx", None, T0 + 12.0, T0 + 12.1, None, result="no_match"),
        StepResult(call_id, "pin", "fallback", False, "asr whisper: RuntimeError: boom",
                   T0 + 12.1),
        CallEnded(call_id, T0 + 30.5, "ANSWERED", "normal_clearing", "bot"),
    ]  # fmt: skip


def _count(engine: Engine, model: type[Call] | type[Turn] | type[Event], call_id: str) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(model.call_id == call_id))


@contextlib.contextmanager
def recorder(url: str, spool: Path, **kwargs: object) -> Iterator[CallRecorder]:
    rec = CallRecorder(url, "node-a", spool_dir=spool, **kwargs)  # type: ignore[arg-type]
    rec.start()
    try:
        yield rec
    finally:
        rec.close(timeout=5.0)


# -- tests -------------------------------------------------------------------------------------


def test_full_call_writes_call_and_turns(backend: Backend, tmp_path: Path) -> None:
    with recorder(backend.url, tmp_path / "spool") as rec:
        for event in call_events("call-1@pbx"):
            rec.on_call_event(event)
        assert rec.flush(10.0)
        assert rec.spool_depth == 0

    call = get_call(backend.reader, "call-1@pbx")
    assert call is not None
    assert call["from_uri"] == "sip:alice@example.com"
    assert call["to_uri"] == "sip:bot@pbx"
    assert (call["dst"], call["dialplan"], call["codec"]) == ("1000", "banking", "PCMU")
    assert (call["src"], call["clid"], call["dcontext"]) == ("alice", "alice", "banking")
    assert (call["uniqueid"], call["channel"]) == ("call-1@pbx", "PJSIP/192.0.2.7:5060")
    assert call["node"] == "node-a"
    assert call["calldate"] == datetime.fromtimestamp(T0, tz=UTC)
    assert call["calldate"].tzinfo is not None
    assert call["duration"] == pytest.approx(30.5)
    assert call["billsec"] == pytest.approx(30.0)
    assert (call["disposition"], call["hangup_cause"], call["hangup_by"]) == (
        "ANSWERED",
        "normal_clearing",
        "bot",
    )
    assert call["outcome"] == "contained"
    assert call["variables"] == {"account": "123", "userfield": "vip"}
    assert call["userfield"] == "vip"
    events = get_events(backend.reader, "call-1@pbx")
    assert [(e["kind"], e["ok"], e["detail"]) for e in events] == [
        ("webhook", True, None),
        ("fallback", False, "asr whisper: RuntimeError: boom"),
    ]

    turns = get_turns(backend.reader, "call-1@pbx")
    assert [t["turn_index"] for t in turns] == [0, 1]
    assert turns[0]["transcript"] == "one two three"
    assert turns[0]["confidence"] == pytest.approx(0.91)
    assert turns[0]["asr_ms"] == pytest.approx(250.0)
    assert turns[0]["response_ms"] == pytest.approx(600.0)
    assert (turns[0]["result"], turns[1]["result"]) == ("matched", "no_match")
    assert turns[1]["grammar"] is None
    assert turns[1]["asr_ms"] == pytest.approx(100.0)
    assert turns[1]["first_audio_at"] is None and turns[1]["response_ms"] is None
    assert get_call(backend.reader, "unknown") is None
    assert get_turns(backend.reader, "unknown") == []


def test_unanswered_call_has_zero_billsec(backend: Backend, tmp_path: Path) -> None:
    with recorder(backend.url, tmp_path / "spool") as rec:
        rec.on_call_event(CallEnded("busy-1", T0 + 2.0, "BUSY", "user_busy", "system"))
        assert rec.flush(10.0)
        # A rejected INVITE: started, never answered, ended at once.
        rec.on_call_event(CallStarted("rej-1", "sip:a@b", "sip:bot@pbx", "9", "", "", T0, None))
        rec.on_call_event(CallEnded("rej-1", T0 + 0.25, "FAILED", "over_limit", "system"))
        assert rec.flush(10.0)
    call = get_call(backend.reader, "busy-1")
    assert call is not None
    assert call["disposition"] == "BUSY"
    assert call["billsec"] == 0.0
    assert call["duration"] is None  # no start was ever seen
    rejected = get_call(backend.reader, "rej-1")
    assert rejected is not None and rejected["answered_at"] is None
    assert rejected["duration"] == pytest.approx(0.25)
    assert rejected["billsec"] == 0.0
    assert rejected["outcome"] == "rejected"


def test_replay_does_not_duplicate(backend: Backend, tmp_path: Path) -> None:
    events = call_events("call-2@pbx")
    with recorder(backend.url, tmp_path / "spool") as rec:
        for event in events:
            rec.on_call_event(event)
        assert rec.flush(10.0)
    # The same spool replayed from its start (a checkpoint lost in a crash) changes nothing.
    (tmp_path / "spool" / "checkpoint").unlink()
    with recorder(backend.url, tmp_path / "spool") as rec:
        assert rec.pending == len(events)
        assert rec.flush(10.0)
    # Turns and calls are keyed by content, so even events sent again (new sequence numbers)
    # in reverse order leave one call and two turns.
    with recorder(backend.url, tmp_path / "spool2") as rec:
        for event in events[::-1]:
            if not isinstance(event, StepResult):
                rec.on_call_event(event)
        assert rec.flush(10.0)
    assert _count(backend.reader, Call, "call-2@pbx") == 1
    assert _count(backend.reader, Turn, "call-2@pbx") == 2
    assert _count(backend.reader, Event, "call-2@pbx") == 2
    call = get_call(backend.reader, "call-2@pbx")
    assert call is not None and call["duration"] == pytest.approx(30.5)


@pytest.mark.parametrize("down_at_start", [False, True], ids=["down-mid-run", "down-at-start"])
def test_events_during_outage_are_written_in_order(
    backend: Backend, down_at_start: bool, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    events = call_events("call-3@pbx")
    started, middle, ended = events[0], events[1:-1], events[-1]
    # A correction of turn 0 sent after the original: only the later one may survive.
    correction = TurnCompleted("call-3@pbx", 0, "account", "Your account number?", "one two four",
                               0.95, "pocketsphinx", "digits",
                               T0 + 5.0, T0 + 5.3, T0 + 5.6)  # fmt: skip

    with recorder(backend.url, tmp_path / "spool", max_backoff_s=0.2) as rec:
        if not down_at_start:
            rec.on_call_event(started)
            assert rec.flush(10.0)
        with backend.outage():
            t = time.monotonic()
            if down_at_start:
                rec.on_call_event(started)
            for event in [*middle, correction, ended]:
                rec.on_call_event(event)
            assert time.monotonic() - t < 0.1, "on_call_event blocked during the outage"
            assert not rec.flush(0.8), "events cannot have been written while the DB is down"
            assert rec.degraded
            assert rec.spool_depth == len(middle) + 2 + (1 if down_at_start else 0)
            if not down_at_start:  # (otherwise not even the tables exist yet)
                assert get_turns(backend.reader, "call-3@pbx") == []
        assert rec.flush(15.0), "backlog not written after the database came back"
        assert not rec.degraded

    turns_rows = get_turns(backend.reader, "call-3@pbx")
    assert [t["turn_index"] for t in turns_rows] == [0, 1]
    assert turns_rows[0]["transcript"] == "one two four"
    assert turns_rows[0]["asr_ms"] == pytest.approx(300.0)
    call = get_call(backend.reader, "call-3@pbx")
    assert call is not None and call["billsec"] == pytest.approx(30.0)
    outage_warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_warnings) == 1, [r.getMessage() for r in caplog.records]


def test_outage_spools_everything_and_never_blocks(backend: Backend, tmp_path: Path) -> None:
    with recorder(backend.url, tmp_path / "spool", queue_size=100, max_backoff_s=0.2) as rec:
        rec.on_call_event(CallStarted("warm", "sip:a@b", "sip:c@d", "1", "x", "PCMU", T0, T0))
        assert rec.flush(10.0)  # schema made, database reachable
        with backend.outage():
            worst = 0.0
            for i in range(1000):
                t = time.perf_counter()
                rec.on_call_event(CallEnded(f"call-{i}", T0 + 1, "ANSWERED", "", "caller"))
                worst = max(worst, time.perf_counter() - t)
                if i % 50 == 0:
                    time.sleep(0.01)  # a burst of calls, not one tight loop
            assert worst < 0.05, f"on_call_event took {worst * 1000:.1f} ms"
            deadline = time.monotonic() + 5
            while rec.spool_depth < 1000 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert rec.spool_depth == 1000  # on disk, not in memory, while the DB is down
            assert rec.dropped == 0
        assert rec.flush(20.0)
    with backend.reader.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Call)) == 1001


def test_queue_overflow_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The queue only fills when the spool cannot take events (a stalled disk); a recorder
    that is not draining stands in for that."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rec = CallRecorder(f"sqlite:///{tmp_path}/c.db", "n", spool_dir=tmp_path / "s", queue_size=10)
    try:
        for i in range(25):
            rec.on_call_event(StepEntered(f"call-{i}", "welcome", T0))
        assert (rec.dropped, rec.pending) == (15, 10)
    finally:
        rec.close(timeout=0.1)
    overflow_errors = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(overflow_errors) == 1


def test_rejected_event_does_not_block_the_rest(
    pg_schema: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    url = _pg_url(PG_PORT, pg_schema)
    bad = CallEnded("call-4@pbx", T0 + 9, "X" * 200, "normal_clearing", "caller")  # > String(16)
    with recorder(url, tmp_path / "spool") as rec:
        for event in [*call_events("call-5@pbx")[:1], bad, *call_events("call-6@pbx")]:
            rec.on_call_event(event)
        assert rec.flush(10.0)
    reader = open_engine(url)
    try:
        assert get_call(reader, "call-5@pbx") is not None
        call6 = get_call(reader, "call-6@pbx")
        assert call6 is not None and call6["disposition"] == "ANSWERED"
        assert get_call(reader, "call-4@pbx") is None
    finally:
        reader.dispose()
    assert any("rejected" in r.getMessage() for r in caplog.records)


def test_open_engine_sqlite_creates_dir_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "calls.db"
    engine = open_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert conn.scalar(text("PRAGMA foreign_keys")) == 1
        assert path.parent.is_dir()
    finally:
        engine.dispose()


def test_open_engine_maps_bare_postgresql_to_psycopg() -> None:
    engine = open_engine("postgresql://postgres@127.0.0.1:5432/test")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://u@h/db", "unsupported database URL scheme 'mysql'"),
        ("postgresql+psycopg2://u@h/db", "postgresql\\+psycopg2"),
        ("sqlite://", "need a file path"),
        ("sqlite:///:memory:", "need a file path"),
        ("not a url", "invalid database URL"),
    ],
)
def test_open_engine_rejects_unsupported_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        open_engine(url)
