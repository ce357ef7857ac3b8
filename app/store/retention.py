"""Retention: delete call records and recordings older than the configured number of days.

Run by `switchboard db prune` (daily, from cron or a systemd timer). Deletes in batches of
calls, each in its own transaction, so a large first prune never holds locks for long and an
interrupted one keeps what it did. A call's age is its `calldate` (or, for a record whose
start was never seen, its end). Recordings live in `<data_dir>/recordings/<call folder>/`; a
pruned call's folder goes with it, and folders of calls no record knows (written while the
database was unreachable and spooled records were pruned first, or left by a crash) go once
every file in them is older than the cut-off.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, and_, delete, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.call.session import recording_folder
from app.store.models import Call, Event, Turn

BATCH = 500


@dataclass(frozen=True, slots=True)
class PruneResult:
    calls: int = 0
    turns: int = 0
    events: int = 0
    recordings: int = 0  # call folders deleted


def prune(
    engine: Engine,
    cutoff: datetime,
    recordings_dir: Path | None = None,
    *,
    dry_run: bool = False,
) -> PruneResult:
    """Delete calls (with their turns and events) from before `cutoff`, and their recordings;
    `dry_run` only counts."""
    if dry_run:
        return _count(engine, cutoff, recordings_dir)
    calls = turns = events = folders = 0
    while True:
        with Session(engine) as session, session.begin():
            ids = list(session.scalars(select(Call.call_id).where(_old(cutoff)).limit(BATCH)))
            if not ids:
                break
            turns += session.execute(delete(Turn).where(Turn.call_id.in_(ids))).rowcount
            events += session.execute(delete(Event).where(Event.call_id.in_(ids))).rowcount
            calls += session.execute(delete(Call).where(Call.call_id.in_(ids))).rowcount
        if recordings_dir is not None:
            folders += sum(_remove(recordings_dir / recording_folder(i)) for i in ids)
    if recordings_dir is not None:
        folders += sum(_remove(folder) for folder in _stale_folders(recordings_dir, cutoff))
    return PruneResult(calls, turns, events, folders)


def _old(cutoff: datetime) -> ColumnElement[bool]:
    return or_(Call.calldate < cutoff, and_(Call.calldate.is_(None), Call.ended_at < cutoff))


def _count(engine: Engine, cutoff: datetime, recordings_dir: Path | None) -> PruneResult:
    old_ids = select(Call.call_id).where(_old(cutoff))
    with Session(engine) as session:
        calls = session.scalar(select(func.count()).select_from(old_ids.subquery())) or 0
        turns = session.scalar(select(func.count()).where(Turn.call_id.in_(old_ids))) or 0
        events = session.scalar(select(func.count()).where(Event.call_id.in_(old_ids))) or 0
        names = {recording_folder(i) for i in session.scalars(old_ids)}
    folders = 0
    if recordings_dir is not None and recordings_dir.is_dir():
        stale = {f.name for f in _stale_folders(recordings_dir, cutoff)}
        folders = sum(1 for f in recordings_dir.iterdir() if f.name in names | stale)
    return PruneResult(calls, turns, events, folders)


def _stale_folders(recordings_dir: Path, cutoff: datetime) -> list[Path]:
    if not recordings_dir.is_dir():
        return []
    limit = cutoff.timestamp()
    return [
        folder
        for folder in recordings_dir.iterdir()
        if folder.is_dir() and _newest_mtime(folder) < limit
    ]


def _newest_mtime(folder: Path) -> float:
    times = [path.stat().st_mtime for path in folder.rglob("*") if path.is_file()]
    return max(times, default=folder.stat().st_mtime)


def _remove(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if folder.exists() else 1


def cutoff_for(days: int, now: float | None = None) -> datetime:
    """The moment `days` days before `now` (UTC)."""
    return datetime.fromtimestamp((time.time() if now is None else now) - days * 86400, tz=UTC)
