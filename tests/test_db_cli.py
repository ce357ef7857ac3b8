"""`switchboard db upgrade | downgrade | current | prune` on real SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.call.session import recording_folder
from app.cli import main
from app.store import migrate
from app.store.db import open_engine
from app.store.models import Call, Event, Turn
from tests.pg_schema import pg_url, postgres_problem, private_schema

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'calls.db'}"
        return
    problem = postgres_problem()
    if problem:
        pytest.fail(problem)
    with private_schema() as schema:
        yield pg_url(schema)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text('[server]\ndata_dir = "data"\n[store]\nretention_days = 30\n')
    return path


def test_upgrade_current_downgrade(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "current", "--db", db_url]) == 0
    assert "revision none" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert "empty -> 0002" in capsys.readouterr().out
    assert main(["db", "current", "--db", db_url]) == 0
    assert "revision 0002, newest 0002: up to date" in capsys.readouterr().out
    assert main(["db", "downgrade", "0001", "--db", db_url]) == 0
    assert "0002 -> 0001" in capsys.readouterr().out
    assert main(["db", "downgrade", "nope", "--db", db_url]) == 2
    assert "nope" in capsys.readouterr().err


def test_unreachable_database_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "secret" not in err


def _seed(url: str, recordings: Path) -> None:
    now = time.time()
    engine = open_engine(url)
    migrate.upgrade(engine)
    with Session(engine) as session, session.begin():
        for call_id, age_days in (("old-1", 45), ("old-2", 31), ("new-1", 29), ("new-2", 1)):
            at = datetime.fromtimestamp(now - age_days * DAY, tz=UTC)
            session.add(Call(call_id=call_id, calldate=at, ended_at=at))
            session.flush()
            session.add_all([Turn(call_id=call_id, turn_index=i) for i in range(2)])
            session.add(Event(call_id=call_id, seq=1, kind="dtmf", ok=True))
        stub = datetime.fromtimestamp(now - 40 * DAY, tz=UTC)
        session.add(Call(call_id="stub-old", ended_at=stub))  # start never seen
    engine.dispose()
    for call_id in ("old-1", "new-1"):
        folder = recordings / recording_folder(call_id)
        folder.mkdir(parents=True)
        (folder / "message.wav").write_bytes(b"RIFF")
    orphan = recordings / "orphan"  # no record knows it; every file older than the cut-off
    orphan.mkdir()
    (orphan / "a.wav").write_bytes(b"RIFF")
    os.utime(orphan / "a.wav", (now - 60 * DAY, now - 60 * DAY))


def _counts(url: str) -> tuple[int, int, int]:
    engine = open_engine(url)
    try:
        with Session(engine) as session:
            return tuple(  # type: ignore[return-value]
                session.scalar(select(func.count()).select_from(model)) or 0
                for model in (Call, Turn, Event)
            )
    finally:
        engine.dispose()


def test_prune_deletes_old_records_and_recordings(
    db_url: str, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recordings = config_file.parent / "data" / "recordings"
    _seed(db_url, recordings)
    args = ["db", "prune", "--config", str(config_file), "--db", db_url]

    assert main([*args, "--dry-run"]) == 0
    assert "would delete 3 call(s), 4 turn(s), 2 event(s) and 2 recording folder(s)" in (
        capsys.readouterr().out
    )
    assert _counts(db_url) == (5, 8, 4)

    assert main(args) == 0  # retention_days = 30 from the config
    assert "deleted 3 call(s), 4 turn(s), 2 event(s) and 2 recording folder(s)" in (
        capsys.readouterr().out
    )
    assert _counts(db_url) == (2, 4, 2)
    assert sorted(p.name for p in recordings.iterdir()) == [recording_folder("new-1")]

    assert main([*args, "--older-than", "2"]) == 0
    assert _counts(db_url) == (1, 2, 1)


def test_prune_without_retention_is_refused(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "prune", "--db", db_url]) == 2
    assert "retention_days is 0" in capsys.readouterr().err
