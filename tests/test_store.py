"""Call records: the recorder against real SQLite files and the real PostgreSQL server.

Outages are real: for PostgreSQL the recorder connects through a local TCP forwarder whose port
is closed and reopened; for SQLite another connection holds the write lock.
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

from app.call.events import CallEnded, CallEvent, CallStarted, StepEntered, TurnCompleted
from app.store import CallRecorder, get_call, get_turns, open_engine
from app.store.models import Call, Turn
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
                    T0, T0 + 0.5),
        StepEntered(call_id, "welcome", T0 + 0.6),
        TurnCompleted(call_id, 0, "account", "Your account number?", "one two three", 0.91,
                      "pocketsphinx", "digits", T0 + 5.0, T0 + 5.25, T0 + 5.6),
        StepEntered(call_id, "pin", T0 + 5.6),
        TurnCompleted(call_id, 1, "pin", "Your PIN?", "four five", 0.8,
                      "pocketsphinx", None, T0 + 12.0, T0 + 12.1, None),
        CallEnded(call_id, T0 + 30.5, "ANSWERED", "normal_clearing", "bot"),
    ]  # fmt: skip


def _count(engine: Engine, model: type[Call] | type[Turn], call_id: str) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(model.call_id == call_id))


@contextlib.contextmanager
def recorder(url: str, **kwargs: object) -> Iterator[CallRecorder]:
    rec = CallRecorder(url, "node-a", **kwargs)  # type: ignore[arg-type]
    rec.start()
    try:
        yield rec
    finally:
        rec.close(timeout=5.0)


# -- tests -------------------------------------------------------------------------------------


def test_full_call_writes_call_and_turns(backend: Backend) -> None:
    with recorder(backend.url) as rec:
        for event in call_events("call-1@pbx"):
            rec.on_call_event(event)
        assert rec.flush(10.0)

    call = get_call(backend.reader, "call-1@pbx")
    assert call is not None
    assert call["from_uri"] == "sip:alice@example.com"
    assert call["to_uri"] == "sip:bot@pbx"
    assert (call["dialled"], call["dialplan"], call["codec"]) == ("1000", "banking", "PCMU")
    assert call["node"] == "node-a"
    assert call["started_at"] == datetime.fromtimestamp(T0, tz=UTC)
    assert call["started_at"].tzinfo is not None
    assert call["duration_s"] == pytest.approx(30.5)
    assert call["billsec_s"] == pytest.approx(30.0)
    assert (call["disposition"], call["hangup_cause"], call["hangup_by"]) == (
        "ANSWERED",
        "normal_clearing",
        "bot",
    )

    turns = get_turns(backend.reader, "call-1@pbx")
    assert [t["turn_index"] for t in turns] == [0, 1]
    assert turns[0]["transcript"] == "one two three"
    assert turns[0]["confidence"] == pytest.approx(0.91)
    assert turns[0]["asr_ms"] == pytest.approx(250.0)
    assert turns[0]["response_ms"] == pytest.approx(600.0)
    assert turns[1]["grammar"] is None
    assert turns[1]["asr_ms"] == pytest.approx(100.0)
    assert turns[1]["first_audio_at"] is None and turns[1]["response_ms"] is None
    assert get_call(backend.reader, "unknown") is None
    assert get_turns(backend.reader, "unknown") == []


def test_unanswered_call_has_zero_billsec(backend: Backend) -> None:
    with recorder(backend.url) as rec:
        rec.on_call_event(CallEnded("busy-1", T0 + 2.0, "BUSY", "user_busy", "system"))
        assert rec.flush(10.0)
        # A rejected INVITE: started, never answered, ended at once.
        rec.on_call_event(CallStarted("rej-1", "sip:a@b", "sip:bot@pbx", "9", "", "", T0, None))
        rec.on_call_event(CallEnded("rej-1", T0 + 0.25, "FAILED", "over_limit", "system"))
        assert rec.flush(10.0)
    call = get_call(backend.reader, "busy-1")
    assert call is not None
    assert call["disposition"] == "BUSY"
    assert call["billsec_s"] == 0.0
    assert call["duration_s"] is None  # no start was ever seen
    rejected = get_call(backend.reader, "rej-1")
    assert rejected is not None and rejected["answered_at"] is None
    assert rejected["duration_s"] == pytest.approx(0.25)
    assert rejected["billsec_s"] == 0.0


def test_replay_does_not_duplicate(backend: Backend) -> None:
    events = call_events("call-2@pbx")
    with recorder(backend.url) as rec:
        for event in events:
            rec.on_call_event(event)
        assert rec.flush(10.0)
    # A second recorder (a restart replaying its backlog) sends everything again, out of order.
    with recorder(backend.url) as rec:
        for event in events + events[::-1]:
            rec.on_call_event(event)
        assert rec.flush(10.0)
    assert _count(backend.reader, Call, "call-2@pbx") == 1
    assert _count(backend.reader, Turn, "call-2@pbx") == 2
    call = get_call(backend.reader, "call-2@pbx")
    assert call is not None and call["duration_s"] == pytest.approx(30.5)


@pytest.mark.parametrize("down_at_start", [False, True], ids=["down-mid-run", "down-at-start"])
def test_events_during_outage_are_written_in_order(
    backend: Backend, down_at_start: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    events = call_events("call-3@pbx")
    started, turns, ended = events[0], events[1:5], events[5]
    # A correction of turn 0 sent after the original: only the later one may survive.
    correction = TurnCompleted("call-3@pbx", 0, "account", "Your account number?", "one two four",
                               0.95, "pocketsphinx", "digits",
                               T0 + 5.0, T0 + 5.3, T0 + 5.6)  # fmt: skip

    with recorder(backend.url, max_backoff_s=0.2) as rec:
        if not down_at_start:
            rec.on_call_event(started)
            assert rec.flush(10.0)
        with backend.outage():
            t = time.monotonic()
            if down_at_start:
                rec.on_call_event(started)
            for event in [*turns, correction, ended]:
                rec.on_call_event(event)
            assert time.monotonic() - t < 0.1, "on_call_event blocked during the outage"
            assert not rec.flush(0.8), "events cannot have been written while the DB is down"
            assert rec.degraded
            if not down_at_start:  # (otherwise not even the tables exist yet)
                assert get_turns(backend.reader, "call-3@pbx") == []
        assert rec.flush(15.0), "backlog not written after the database came back"
        assert not rec.degraded

    turns_rows = get_turns(backend.reader, "call-3@pbx")
    assert [t["turn_index"] for t in turns_rows] == [0, 1]
    assert turns_rows[0]["transcript"] == "one two four"
    assert turns_rows[0]["asr_ms"] == pytest.approx(300.0)
    call = get_call(backend.reader, "call-3@pbx")
    assert call is not None and call["billsec_s"] == pytest.approx(30.0)
    outage_warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_warnings) == 1, [r.getMessage() for r in caplog.records]


def test_observer_never_blocks_and_counts_overflow(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with recorder(backend.url, queue_size=100, max_backoff_s=0.2) as rec, backend.outage():
        worst = 0.0
        for i in range(1000):
            event = StepEntered(f"call-{i}", "welcome", T0)
            t = time.perf_counter()
            rec.on_call_event(event)
            worst = max(worst, time.perf_counter() - t)
        assert worst < 0.05, f"on_call_event took {worst * 1000:.1f} ms"
        # The writer holds one batch while retrying; the queue holds 100 more.
        assert 1000 - 101 - 200 <= rec.dropped <= 1000 - 100
    overflow_errors = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(overflow_errors) == 1


def test_rejected_event_does_not_block_the_rest(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    url = _pg_url(PG_PORT, pg_schema)
    bad = CallEnded("call-4@pbx", T0 + 9, "X" * 200, "normal_clearing", "caller")  # > String(16)
    with recorder(url) as rec:
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
