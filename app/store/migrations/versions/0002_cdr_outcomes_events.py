"""Asterisk CDR columns, call outcomes, variables as JSON, turn results, the events table, and
views for BI tools.

calls: started_at -> calldate, dialled -> dst, duration_s -> duration, billsec_s -> billsec;
new clid, src, dcontext, channel, uniqueid, userfield, outcome, variables (JSON, taking over
the call_variables table). turns: new result. call_steps becomes events keyed by (call_id, seq)
so a replayed record never adds a row. Existing rows are carried over both ways.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from app.store.apply import USERFIELD, caller_id, outcome_of

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

VIEWS = {
    # Asterisk's CDR columns only, for reports written against Asterisk's cdr table.
    "cdr": """
        SELECT calldate, clid, src, dst, dcontext, channel, duration, billsec, disposition,
               uniqueid, userfield
        FROM calls""",
    # One row per call with what BI dashboards group by, and its turn and fallback counts.
    "call_summary": """
        SELECT c.call_id, c.calldate, c.node, c.dialplan, c.dialplan_version, c.src, c.dst,
               c.disposition, c.outcome, c.hangup_by, c.duration, c.billsec,
               (SELECT COUNT(*) FROM turns t WHERE t.call_id = c.call_id) AS turns,
               (SELECT COUNT(*) FROM turns t
                 WHERE t.call_id = c.call_id AND t.result = 'no_match') AS no_matches,
               (SELECT COUNT(*) FROM events e
                 WHERE e.call_id = c.call_id AND e.kind = 'fallback') AS fallbacks
        FROM calls c""",
    # One row per turn with its call's dialplan and date: latency percentiles per stage.
    "turn_latency": """
        SELECT t.call_id, t.turn_index, c.calldate, c.dialplan, t.step, t.engine,
               t.tts_engine, t.grammar, t.result, t.barge_in, t.asr_ms, t.decide_ms, t.tts_ms,
               t.playout_ms, t.response_ms
        FROM turns t JOIN calls c ON c.call_id = t.call_id""",
    # Calls per UTC day, dialplan and outcome (date() is the same function on both databases).
    "daily_outcomes": """
        SELECT date(calldate) AS day, dialplan, outcome, COUNT(*) AS calls,
               AVG(billsec) AS avg_billsec
        FROM calls
        GROUP BY date(calldate), dialplan, outcome""",
}

calls = sa.table(
    "calls",
    sa.column("call_id", sa.String),
    sa.column("from_uri", sa.String),
    sa.column("dialplan", sa.String),
    sa.column("answered_at", TS),
    sa.column("ended_at", TS),
    sa.column("disposition", sa.String),
    sa.column("hangup_by", sa.String),
    sa.column("clid", sa.String),
    sa.column("src", sa.String),
    sa.column("dcontext", sa.String),
    sa.column("uniqueid", sa.String),
    sa.column("userfield", sa.String),
    sa.column("outcome", sa.String),
    sa.column("variables", sa.JSON),
)
call_variables = sa.table(
    "call_variables",
    sa.column("call_id", sa.String),
    sa.column("name", sa.String),
    sa.column("value", sa.Text),
    sa.column("step", sa.String),
    sa.column("set_at", TS),
)
call_steps = sa.table(
    "call_steps",
    sa.column("id", sa.Integer),
    sa.column("call_id", sa.String),
    sa.column("step", sa.String),
    sa.column("kind", sa.String),
    sa.column("ok", sa.Boolean),
    sa.column("detail", sa.Text),
    sa.column("at", TS),
)
events = sa.table(
    "events",
    sa.column("call_id", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("at", TS),
    sa.column("kind", sa.String),
    sa.column("step", sa.String),
    sa.column("ok", sa.Boolean),
    sa.column("detail", sa.Text),
)


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "events",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", TS),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("step", sa.String()),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.call_id"], name="fk_events_call_id_calls", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_events"),
    )
    op.create_index("ix_events_kind_at", "events", ["kind", "at"])
    steps = bind.execute(sa.select(call_steps).order_by(call_steps.c.id)).mappings().all()
    if steps:
        bind.execute(
            events.insert(),
            [
                {k: row[k] for k in ("call_id", "at", "kind", "step", "ok", "detail")}
                | {"seq": row["id"]}
                for row in steps
            ],
        )
    op.drop_index("ix_call_steps_call_id", table_name="call_steps")
    op.drop_table("call_steps")

    op.drop_index("ix_calls_dialplan", table_name="calls")
    op.drop_index("ix_calls_started_at", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.alter_column("started_at", new_column_name="calldate")
        batch.alter_column("dialled", new_column_name="dst")
        batch.alter_column("duration_s", new_column_name="duration")
        batch.alter_column("billsec_s", new_column_name="billsec")
        for name in ("clid", "src", "dcontext", "channel", "uniqueid", "userfield"):
            batch.add_column(sa.Column(name, sa.String()))
        batch.add_column(sa.Column("outcome", sa.String(16)))
        batch.add_column(sa.Column("variables", sa.JSON()))
    op.create_index("ix_calls_calldate", "calls", ["calldate"])
    op.create_index("ix_calls_dialplan_calldate", "calls", ["dialplan", "calldate"])
    op.create_index("ix_calls_outcome_calldate", "calls", ["outcome", "calldate"])
    _fill_calls(bind)
    op.drop_table("call_variables")

    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("result", sa.String(16)))
    op.create_index("ix_turns_result_step", "turns", ["result", "step"])

    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def _fill_calls(bind: sa.Connection) -> None:
    """The new columns of existing calls, from what they already hold."""
    variables: dict[str, dict[str, str]] = defaultdict(dict)
    for row in bind.execute(sa.select(call_variables)).mappings():
        variables[row["call_id"]][row["name"]] = row["value"]
    marks = {
        (row.call_id, row.kind)
        for row in bind.execute(
            sa.select(events.c.call_id, events.c.kind).where(
                sa.or_(
                    sa.and_(events.c.kind == "transfer", events.c.ok.is_(True)),
                    sa.and_(events.c.kind == "error", events.c.ok.is_(False)),
                )
            )
        )
    }
    for row in bind.execute(sa.select(calls)).mappings().all():
        call_id = row["call_id"]
        clid, src = caller_id(row["from_uri"] or "")
        values = variables.get(call_id)
        outcome = None
        if row["ended_at"] is not None:
            outcome = outcome_of(
                answered=row["answered_at"] is not None
                and row["disposition"] in (None, "ANSWERED"),
                hangup_by=row["hangup_by"] or "",
                transferred=(call_id, "transfer") in marks,
                failed=(call_id, "error") in marks,
            )
        bind.execute(
            calls.update()
            .where(calls.c.call_id == call_id)
            .values(
                clid=clid,
                src=src,
                dcontext=row["dialplan"],
                uniqueid=call_id,
                userfield=(values or {}).get(USERFIELD),
                outcome=outcome,
                variables=values,
            )
        )


def downgrade() -> None:
    bind = op.get_bind()
    for name in VIEWS:
        op.execute(f"DROP VIEW {name}")

    op.drop_index("ix_turns_result_step", table_name="turns")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("result")

    op.create_table(
        "call_variables",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Text()),
        sa.Column("step", sa.String()),
        sa.Column("set_at", TS),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["calls.call_id"],
            name="fk_call_variables_call_id_calls",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("call_id", "name", name="pk_call_variables"),
    )
    rows = bind.execute(sa.select(calls.c.call_id, calls.c.variables)).all()
    values = [
        {"call_id": call_id, "name": name, "value": value}
        for call_id, variables in rows
        for name, value in (variables or {}).items()
    ]
    if values:
        bind.execute(call_variables.insert(), values)

    op.drop_index("ix_calls_calldate", table_name="calls")
    op.drop_index("ix_calls_dialplan_calldate", table_name="calls")
    op.drop_index("ix_calls_outcome_calldate", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        for name in ("clid", "src", "dcontext", "channel", "uniqueid", "userfield", "outcome"):
            batch.drop_column(name)
        batch.drop_column("variables")
        batch.alter_column("calldate", new_column_name="started_at")
        batch.alter_column("dst", new_column_name="dialled")
        batch.alter_column("duration", new_column_name="duration_s")
        batch.alter_column("billsec", new_column_name="billsec_s")
    op.create_index("ix_calls_dialplan", "calls", ["dialplan"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])

    op.create_table(
        "call_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("step", sa.String(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("at", TS),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.call_id"], name="fk_call_steps_call_id_calls", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_call_steps"),
    )
    op.create_index("ix_call_steps_call_id", "call_steps", ["call_id"])
    kept = bind.execute(sa.select(events).order_by(events.c.seq)).mappings().all()
    if kept:  # ids are assigned anew in event order (seq values need not fit an INTEGER)
        bind.execute(
            call_steps.insert(),
            [
                {k: row[k] for k in ("call_id", "at", "kind", "ok", "detail")}
                | {"step": row["step"] or ""}
                for row in kept
            ],
        )
    op.drop_index("ix_events_kind_at", table_name="events")
    op.drop_table("events")
