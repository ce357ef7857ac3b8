"""Call-record tables: one `calls` row per call (an Asterisk-style CDR), one `turns` row per
exchange with its latencies, and `events` for what else happened on the call.

Plain declarative models with named constraints; the Alembic migrations in
`app/store/migrations` create exactly this schema (a test compares them). Only portable types
are used: the same schema on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
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
    """One call: the core columns of Asterisk's CDR, so existing CDR reports map over, plus ours.

    CDR columns: `calldate` (INVITE received), `clid` (`"Name" <number>`), `src` (caller
    number), `dst` (dialled number), `dcontext` (the dialplan, Asterisk's context), `channel`
    (`PJSIP/<source address>`), `duration` (seconds from calldate to end), `billsec` (from answer
    to end, 0 unanswered), `disposition` (ANSWERED, NO ANSWER, BUSY, FAILED), `uniqueid` (the
    SIP Call-ID), `userfield` (free for the operator: set a dialplan variable `userfield`).
    Ours: the dialplan and its `dialplan_version` (SHA-256 of the file), `codec`, `node`,
    `outcome` (contained, transferred, abandoned, failed, rejected; see `app.store.apply`), and
    the collected `variables` as JSON (sensitive ones redacted)."""

    __tablename__ = "calls"

    call_id: Mapped[str] = mapped_column(String, primary_key=True)  # the SIP Call-ID
    calldate: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    clid: Mapped[str | None] = mapped_column(String)
    src: Mapped[str | None] = mapped_column(String)
    dst: Mapped[str | None] = mapped_column(String)
    dcontext: Mapped[str | None] = mapped_column(String)
    channel: Mapped[str | None] = mapped_column(String)
    duration: Mapped[float | None] = mapped_column(Float)
    billsec: Mapped[float | None] = mapped_column(Float)
    disposition: Mapped[str | None] = mapped_column(String(16))
    uniqueid: Mapped[str | None] = mapped_column(String)
    userfield: Mapped[str | None] = mapped_column(String)
    from_uri: Mapped[str | None] = mapped_column(String)
    to_uri: Mapped[str | None] = mapped_column(String)
    dialplan: Mapped[str | None] = mapped_column(String)
    dialplan_version: Mapped[str | None] = mapped_column(String(64))
    codec: Mapped[str | None] = mapped_column(String)
    node: Mapped[str | None] = mapped_column(String)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))
    hangup_cause: Mapped[str | None] = mapped_column(String)
    hangup_by: Mapped[str | None] = mapped_column(String(16))  # caller, bot, system, transfer
    variables: Mapped[dict[str, str] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_calls_dialplan_calldate", "dialplan", "calldate"),
        Index("ix_calls_outcome_calldate", "outcome", "calldate"),
    )


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
    engines of a fallback chain before them did not ("asr whisper: no final result ...").
    `result`: what the dialogue made of the answer: matched, no_match or no_input."""

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
    result: Mapped[str | None] = mapped_column(String(16))  # matched, no_match, no_input

    __table_args__ = (Index("ix_turns_result_step", "result", "step"),)


class Event(Base):
    """Something that happened on a call besides a turn: a DTMF answer, a transfer, a webhook,
    an LLM request, a recording, a request for an agent, an engine fallback, an error. `ok` is
    False for failures, with the error in `detail`.

    Keyed by (call_id, seq): `seq` is the recorder's sequence number, given once when the event
    is spooled, so a replay rewrites the same row instead of adding one."""

    __tablename__ = "events"

    call_id: Mapped[str] = mapped_column(
        String, ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    step: Mapped[str | None] = mapped_column(String)
    ok: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_events_kind_at", "kind", "at"),)
