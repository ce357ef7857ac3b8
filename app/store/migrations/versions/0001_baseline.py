"""Baseline: the call-record schema as issues 1 to 5 created it (calls, turns, call_variables,
call_steps).

A database made before migrations existed (by `create_all`) already has exactly this; it is
stamped at this revision and upgraded from here (`app.store.migrate`).

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("from_uri", sa.String()),
        sa.Column("to_uri", sa.String()),
        sa.Column("dialled", sa.String()),
        sa.Column("dialplan", sa.String()),
        sa.Column("dialplan_version", sa.String(64)),
        sa.Column("codec", sa.String()),
        sa.Column("node", sa.String()),
        sa.Column("started_at", TS),
        sa.Column("answered_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("duration_s", sa.Float()),
        sa.Column("billsec_s", sa.Float()),
        sa.Column("disposition", sa.String(16)),
        sa.Column("hangup_cause", sa.String()),
        sa.Column("hangup_by", sa.String(16)),
        sa.PrimaryKeyConstraint("call_id", name="pk_calls"),
    )
    op.create_index("ix_calls_dialplan", "calls", ["dialplan"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_table(
        "turns",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("turn_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("step", sa.String()),
        sa.Column("prompt", sa.Text()),
        sa.Column("transcript", sa.Text()),
        sa.Column("confidence", sa.Float()),
        sa.Column("engine", sa.String()),
        sa.Column("grammar", sa.String()),
        sa.Column("speech_end_at", TS),
        sa.Column("asr_final_at", TS),
        sa.Column("decided_at", TS),
        sa.Column("tts_ready_at", TS),
        sa.Column("first_audio_at", TS),
        sa.Column("asr_ms", sa.Float()),
        sa.Column("decide_ms", sa.Float()),
        sa.Column("tts_ms", sa.Float()),
        sa.Column("playout_ms", sa.Float()),
        sa.Column("response_ms", sa.Float()),
        sa.Column("barge_in", sa.Boolean()),
        sa.Column("end_silence_ms", sa.Integer()),
        sa.Column("tts_engine", sa.String()),
        sa.Column("fallbacks", sa.Text()),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.call_id"], name="fk_turns_call_id_calls", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", "turn_index", name="pk_turns"),
    )
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


def downgrade() -> None:
    op.drop_table("call_steps")
    op.drop_table("call_variables")
    op.drop_table("turns")
    op.drop_table("calls")
