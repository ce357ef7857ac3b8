"""Read access to call records as plain dicts, for the CLI, reports and tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.store.models import Base, Call, Event, Turn


def get_call(engine: Engine, call_id: str) -> dict[str, Any] | None:
    """The `calls` row of `call_id` as a dict (column name -> value), or None if unknown."""
    with Session(engine) as session:
        call = session.get(Call, call_id)
        return None if call is None else _as_dict(call)


def get_turns(engine: Engine, call_id: str) -> list[dict[str, Any]]:
    """The turns of `call_id` in order, each as a dict; empty if none."""
    with Session(engine) as session:
        rows = session.scalars(
            select(Turn).where(Turn.call_id == call_id).order_by(Turn.turn_index)
        )
        return [_as_dict(turn) for turn in rows]


def get_variables(engine: Engine, call_id: str) -> dict[str, str]:
    """The dialplan variables stored for `call_id` (the `calls.variables` JSON): name -> value."""
    with Session(engine) as session:
        call = session.get(Call, call_id)
        return dict(call.variables or {}) if call is not None else {}


def get_events(engine: Engine, call_id: str) -> list[dict[str, Any]]:
    """The events of `call_id` (DTMF, transfers, webhooks, fallbacks, errors ...), in order."""
    with Session(engine) as session:
        rows = session.scalars(select(Event).where(Event.call_id == call_id).order_by(Event.seq))
        return [_as_dict(row) for row in rows]


def _as_dict(row: Base) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}
