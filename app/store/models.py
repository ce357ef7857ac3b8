"""Call-record tables: one `calls` row per call (an Asterisk-style CDR) and one `turns` row per
exchange with its latencies.

Plain declarative models with named constraints, so Alembic can autogenerate migrations from
`Base.metadata` later. Only portable types are used: the same schema on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint names: Alembic needs them to alter or drop constraints later."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and would hand back naive values,
    so values are normalised to UTC on the way in and tagged as UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: call records need timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Call(Base):
    """One call. `duration_s` runs from start to end, `billsec_s` from answer to end (CDR terms)."""

    __tablename__ = "calls"

    call_id: Mapped[str] = mapped_column(String, primary_key=True)  # the SIP Call-ID
    from_uri: Mapped[str | None] = mapped_column(String)
    to_uri: Mapped[str | None] = mapped_column(String)
    dialled: Mapped[str | None] = mapped_column(String)
    dialplan: Mapped[str | None] = mapped_column(String, index=True)
    dialplan_version: Mapped[str | None] = mapped_column(String(64))  # SHA-256 of the file
    codec: Mapped[str | None] = mapped_column(String)
    node: Mapped[str | None] = mapped_column(String)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    billsec_s: Mapped[float | None] = mapped_column(Float)
    disposition: Mapped[str | None] = mapped_column(String(16))  # ANSWERED, NO ANSWER, BUSY, FAILED
    hangup_cause: Mapped[str | None] = mapped_column(String)
    hangup_by: Mapped[str | None] = mapped_column(String(16))  # caller, bot, system


class Turn(Base):
    """One exchange of a call, with its latency budget stage by stage.

    Timestamps: end of the caller's speech, final recognition, the dialogue's decision, first
    reply audio ready (TTS or prompt cache), first reply audio sent. Durations, stored rather
    than computed so reports need no date maths: `asr_ms` speech end -> final result,
    `decide_ms` final result -> decision (webhooks, LLM), `tts_ms` decision -> audio ready,
    `playout_ms` audio ready -> first frame sent, `response_ms` speech end -> first frame sent
    (what the caller feels). `barge_in`: the answer interrupted the prompt; `end_silence_ms`:
    the silence that ended it (adaptive endpointing). `engine` recognised the answer,
    `tts_engine` spoke the reply ("cache": from the prompt cache), `fallbacks` says why
    engines of a fallback chain before them did not ("asr whisper: no final result ...")."""

    __tablename__ = "turns"

    call_id: Mapped[str] = mapped_column(
        String, ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True
    )
    turn_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    step: Mapped[str | None] = mapped_column(String)
    prompt: Mapped[str | None] = mapped_column(Text)
    transcript: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    engine: Mapped[str | None] = mapped_column(String)
    grammar: Mapped[str | None] = mapped_column(String)
    speech_end_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    asr_final_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    tts_ready_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    first_audio_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    asr_ms: Mapped[float | None] = mapped_column(Float)
    decide_ms: Mapped[float | None] = mapped_column(Float)
    tts_ms: Mapped[float | None] = mapped_column(Float)
    playout_ms: Mapped[float | None] = mapped_column(Float)
    response_ms: Mapped[float | None] = mapped_column(Float)
    barge_in: Mapped[bool | None] = mapped_column(Boolean)
    end_silence_ms: Mapped[int | None] = mapped_column(Integer)
    tts_engine: Mapped[str | None] = mapped_column(String)
    fallbacks: Mapped[str | None] = mapped_column(Text)


class CallVariable(Base):
    """A dialplan variable's last value on a call (PINs and other sensitive answers arrive
    redacted). One row per name: `SELECT value FROM call_variables WHERE name = 'score'`."""

    __tablename__ = "call_variables"

    call_id: Mapped[str] = mapped_column(
        String, ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    step: Mapped[str | None] = mapped_column(String)
    set_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class StepRecord(Base):
    """What happened at a step that reached outside the call: a webhook, an LLM request, a
    transfer, a recording, a request for an agent; `detail` holds the error when not `ok`."""

    __tablename__ = "call_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(
        String, ForeignKey("calls.call_id", ondelete="CASCADE"), index=True
    )
    step: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime | None] = mapped_column(UtcDateTime)
