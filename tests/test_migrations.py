"""Schema migrations on real SQLite files and the real PostgreSQL server: up, down, up again;
a database made before migrations (issues 1-5) carried over with its rows; the migrated schema
equal to the models; the views answering on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from app.store import migrate
from app.store.db import open_engine
from app.store.migrate import SchemaError
from app.store.models import Base
from app.store.queries import get_call, get_events, get_turns
from tests.pg_schema import pg_url, postgres_problem, private_schema

TABLES = {"calls", "turns", "events"}
VIEWS = {"cdr", "call_summary", "turn_latency", "daily_outcomes"}
LEGACY_TABLES = {"calls", "turns", "call_variables", "call_steps"}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path / 'calls.db'}")
        yield engine
        engine.dispose()
        return
    problem = postgres_problem()
    if problem:
        pytest.fail(problem)
    with private_schema() as schema:
        engine = open_engine(pg_url(schema))
        yield engine
        engine.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def _views(engine: Engine) -> set[str]:
    return set(inspect(engine).get_view_names())


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert migrate.status(engine).current is None
    assert migrate.upgrade(engine).up_to_date
    assert _tables(engine) == TABLES and _views(engine) == VIEWS
    assert migrate.downgrade(engine, "0001").current == "0001"
    assert _tables(engine) == LEGACY_TABLES and _views(engine) == set()
    assert migrate.downgrade(engine, "base").current is None
    assert _tables(engine) == set()
    assert migrate.upgrade(engine).current == migrate.head_revision()
    assert _tables(engine) == TABLES


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    migrate.upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def _legacy_rows(engine: Engine) -> None:
    """What issue 5's server wrote: a transferred call, a contained one, a failed one."""
    t0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    with engine.begin() as conn:
        for call_id, hangup_by in (("c-transfer", "transfer"), ("c-bot", "bot"), ("c-err", "bot")):
            conn.execute(
                text(
                    "INSERT INTO calls (call_id, from_uri, to_uri, dialled, dialplan, codec, node,"
                    " started_at, answered_at, ended_at, duration_s, billsec_s, disposition,"
                    " hangup_cause, hangup_by) VALUES (:id, :from_uri, 'sip:bot@pbx', '1000',"
                    " 'demo', 'PCMU', 'n1', :t0, :t0, :t0, 42.5, 41.0, 'ANSWERED', '200', :by)"
                ),
                {"id": call_id, "from_uri": '"Alice" <sip:1001@pbx>', "t0": t0, "by": hangup_by},
            )
        conn.execute(
            text(
                "INSERT INTO turns (call_id, turn_index, step, transcript, asr_ms) VALUES"
                " ('c-bot', 0, 'account', 'one two', 120.0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO call_variables (call_id, name, value, step) VALUES"
                " ('c-bot', 'account', '12', 'account'), ('c-bot', 'userfield', 'gold', 'x')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO call_steps (call_id, step, kind, ok, detail, at) VALUES"
                " ('c-bot', 'lookup', 'webhook', :yes, NULL, :t0),"
                " ('c-err', 'main', 'error', :no, 'RuntimeError: boom', :t0)"
            ),
            {"yes": True, "no": False, "t0": t0},
        )


def test_pre_migration_database_is_stamped_and_carried_over(engine: Engine) -> None:
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:  # as create_all left it: no alembic_version at all
        conn.execute(text("DROP TABLE alembic_version"))
    _legacy_rows(engine)
    found = migrate.status(engine)
    assert (found.current, found.legacy, found.up_to_date) == ("0001", True, False)

    migrate.ensure_schema(engine, "auto")

    assert migrate.status(engine).up_to_date
    call = get_call(engine, "c-bot")
    assert call is not None
    assert (call["dst"], call["src"], call["clid"], call["dcontext"]) == (
        "1000",
        "1001",
        '"Alice" <1001>',
        "demo",
    )
    assert (call["duration"], call["billsec"], call["uniqueid"]) == (42.5, 41.0, "c-bot")
    assert call["calldate"] == datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    assert call["variables"] == {"account": "12", "userfield": "gold"}
    assert call["userfield"] == "gold"
    assert call["outcome"] == "contained"
    assert get_call(engine, "c-transfer")["outcome"] == "transferred"  # type: ignore[index]
    assert get_call(engine, "c-err")["outcome"] == "failed"  # type: ignore[index]
    assert [t["transcript"] for t in get_turns(engine, "c-bot")] == ["one two"]
    assert [(e["kind"], e["ok"]) for e in get_events(engine, "c-bot")] == [("webhook", True)]

    # ... and back down: the old tables hold the same rows again.
    migrate.downgrade(engine, "0001")
    with engine.connect() as conn:
        variables = conn.execute(
            text("SELECT name, value FROM call_variables WHERE call_id = 'c-bot' ORDER BY name")
        ).all()
        steps = conn.execute(text("SELECT kind, detail FROM call_steps ORDER BY id")).all()
        started = conn.execute(text("SELECT dialled, duration_s FROM calls WHERE call_id='c-bot'"))
        assert [tuple(row) for row in variables] == [("account", "12"), ("userfield", "gold")]
        assert [tuple(row) for row in steps] == [("webhook", None), ("error", "RuntimeError: boom")]
        assert tuple(started.one()) == ("1000", 42.5)


def test_check_mode_refuses_an_old_schema_and_auto_upgrades(engine: Engine) -> None:
    with pytest.raises(SchemaError, match=r"no schema.*switchboard db upgrade"):
        migrate.ensure_schema(engine, "check")
    migrate.upgrade(engine, "0001")
    with pytest.raises(SchemaError, match="revision 0001"):
        migrate.ensure_schema(engine, "check")
    assert migrate.ensure_schema(engine, "auto").up_to_date
    assert migrate.ensure_schema(engine, "check").up_to_date


def test_unknown_newer_revision_is_refused(engine: Engine) -> None:
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="newer Switchboard"):
        migrate.ensure_schema(engine, "auto")


def test_views_answer_with_the_same_sql(engine: Engine) -> None:
    migrate.upgrade(engine)
    t0 = datetime(2026, 11, 2, 23, 30, tzinfo=UTC)
    with engine.begin() as conn:
        for call_id, outcome, billsec in (("a", "contained", 30.0), ("b", "contained", 50.0)):
            conn.execute(
                text(
                    "INSERT INTO calls (call_id, calldate, dialplan, outcome, billsec, src, dst)"
                    " VALUES (:id, :t0, 'demo', :outcome, :billsec, '1001', '1000')"
                ),
                {"id": call_id, "t0": t0, "outcome": outcome, "billsec": billsec},
            )
        conn.execute(
            text(
                "INSERT INTO turns (call_id, turn_index, result, response_ms) VALUES"
                " ('a', 0, 'no_match', 500.0), ('a', 1, 'matched', 300.0)"
            )
        )
        conn.execute(
            text("INSERT INTO events (call_id, seq, kind, ok) VALUES ('a', 1, 'fallback', :no)"),
            {"no": False},
        )
    with engine.connect() as conn:
        daily = conn.execute(text("SELECT day, calls, avg_billsec FROM daily_outcomes")).one()
        assert (str(daily.day), daily.calls, daily.avg_billsec) == ("2026-11-02", 2, 40.0)
        summary = conn.execute(
            text("SELECT turns, no_matches, fallbacks FROM call_summary WHERE call_id = 'a'")
        ).one()
        assert tuple(summary) == (2, 1, 1)
        cdr = conn.execute(text("SELECT src, dst, uniqueid FROM cdr ORDER BY uniqueid")).all()
        assert [tuple(row) for row in cdr] == [("1001", "1000", None), ("1001", "1000", None)]
        latency = conn.execute(
            text("SELECT SUM(response_ms) FROM turn_latency WHERE dialplan = 'demo'")
        ).scalar()
        assert latency == 800.0
