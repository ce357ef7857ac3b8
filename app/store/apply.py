"""How each call event changes the call-record tables.

Every event is an upsert keyed by call_id or (call_id, index) that sets only the fields the
event owns, and derived columns are recomputed from the row. So replaying events never
duplicates a row, and a turn or an end seen before its start (the start lost, or replayed later)
still lands: a stub `calls` row is created and filled in when the start arrives.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.call.events import (
    CallEnded,
    CallEvent,
    CallStarted,
    DialogStarted,
    StepEntered,
    StepResult,
    TurnCompleted,
    VariableSet,
)
from app.sip.routes import request_uri_user
from app.store.models import Call, Event, Turn


def apply_event(session: Session, event: CallEvent, node: str, seq: int | None = None) -> None:
    """Stage the effect of `event` in `session`; the caller commits. `seq` is the recorder's
    sequence number of the event: the key of its `events` row (StepResult needs it)."""
    if isinstance(event, CallStarted):
        call = _call(session, event.call_id, node)
        call.uniqueid = event.call_id
        call.from_uri = event.from_uri
        call.to_uri = event.to_uri
        call.clid, call.src = caller_id(event.from_uri)
        call.dst = event.dialled
        call.dcontext = event.dialplan or None
        call.dialplan = event.dialplan or call.dialplan
        call.channel = f"PJSIP/{event.source}" if event.source else None
        call.codec = event.codec
        call.calldate = _ts(event.started_at)
        call.answered_at = _ts(event.answered_at)
        _derive_call(session, call)
    elif isinstance(event, TurnCompleted):
        _call(session, event.call_id, node)  # the FK needs the call, even a stub
        _apply_turn(session, event)
    elif isinstance(event, CallEnded):
        call = _call(session, event.call_id, node)
        call.ended_at = _ts(event.ended_at)
        call.disposition = event.disposition
        call.hangup_cause = event.hangup_cause
        call.hangup_by = event.hangup_by
        _derive_call(session, call)
    elif isinstance(event, DialogStarted):
        call = _call(session, event.call_id, node)
        call.dialplan = event.dialplan
        call.dialplan_version = event.version
    elif isinstance(event, VariableSet):
        call = _call(session, event.call_id, node)
        call.variables = {**(call.variables or {}), event.name: event.value}  # a new dict: JSON
        if event.name == USERFIELD:
            call.userfield = event.value
    elif isinstance(event, StepResult):
        if seq is None:
            raise ValueError(f"a {event.kind} event of {event.call_id} needs its sequence number")
        call = _call(session, event.call_id, node)
        row = session.get(Event, (event.call_id, seq))
        if row is None:
            row = Event(call_id=event.call_id, seq=seq)
            session.add(row)
        row.at = _ts(event.at)
        row.kind = event.kind
        row.step = event.step
        row.ok = event.ok
        row.detail = event.detail or None
        if event.kind == "transfer" and event.ok and call.ended_at is not None:
            call.outcome = "transferred"  # the transfer's outcome arrived after the hang-up
    elif isinstance(event, StepEntered):
        pass  # the current step is live state (app.state); each turn records its own step
    else:
        raise TypeError(f"not a call event: {event!r}")


USERFIELD = "userfield"
"""A dialplan variable of this name also fills the CDR's `userfield` column."""


def _apply_turn(session: Session, event: TurnCompleted) -> None:
    turn = session.get(Turn, (event.call_id, event.index))
    if turn is None:
        turn = Turn(call_id=event.call_id, turn_index=event.index)
        session.add(turn)
    turn.step = event.step
    turn.prompt = event.prompt
    turn.transcript = event.transcript
    turn.confidence = event.confidence
    turn.engine = event.engine
    turn.grammar = event.grammar
    turn.speech_end_at = _ts(event.speech_end_at)
    turn.asr_final_at = _ts(event.asr_final_at)
    turn.decided_at = _ts(event.decided_at)
    turn.tts_ready_at = _ts(event.tts_ready_at)
    turn.first_audio_at = _ts(event.first_audio_at)
    turn.asr_ms = _ms(event.speech_end_at, event.asr_final_at)
    turn.decide_ms = _ms(event.asr_final_at, event.decided_at)
    turn.tts_ms = _ms(event.decided_at, event.tts_ready_at)
    turn.playout_ms = _ms(event.tts_ready_at, event.first_audio_at)
    turn.response_ms = _ms(event.speech_end_at, event.first_audio_at)
    turn.barge_in = event.barge_in
    turn.end_silence_ms = event.end_silence_ms
    turn.tts_engine = event.tts_engine
    turn.fallbacks = "; ".join(event.fallbacks) or None
    turn.result = event.result


def caller_id(from_uri: str) -> tuple[str | None, str | None]:
    """(clid, src) in Asterisk's terms from a From header value: `"Alice" <sip:1001@pbx>` ->
    (`"Alice" <1001>`, `1001`); without a display name clid is the number alone."""
    match = _NAME_ADDR.match(from_uri.strip())
    if match is None:
        return None, None
    name = (match.group("name") or "").strip().strip('"').strip()
    uri = match.group("uri") or match.group("bare")
    try:
        number = request_uri_user(uri)
    except ValueError:
        number = None
    if number is None:
        return (f'"{name}"' if name else None), None
    return (f'"{name}" <{number}>' if name else number), number


_NAME_ADDR = re.compile(r'^(?P<name>"[^"]*"|[^<]*?)\s*<(?P<uri>[^>]*)>|^(?P<bare>\S+)$')


def _call(session: Session, call_id: str, node: str) -> Call:
    call = session.get(Call, call_id)
    if call is None:
        call = Call(call_id=call_id, uniqueid=call_id, node=node)
        session.add(call)
        session.flush()  # the row must exist before a turn references it
    return call


def _derive_call(session: Session, call: Call) -> None:
    """Asterisk CDR rules: duration from start to end; billsec from answer to end, 0
    unanswered. The outcome once the call is over (`outcome_of`)."""
    if call.ended_at is None:
        call.duration = None
        call.billsec = None
        call.outcome = None
        return
    call.duration = _seconds(call.calldate, call.ended_at)
    answered = call.answered_at is not None and call.disposition in (None, "ANSWERED")
    call.billsec = _seconds(call.answered_at, call.ended_at) if answered else 0.0
    call.outcome = outcome_of(
        answered=answered,
        hangup_by=call.hangup_by or "",
        transferred=_has_event(session, call.call_id, "transfer", ok=True),
        failed=_has_event(session, call.call_id, "error", ok=False),
    )


def outcome_of(*, answered: bool, hangup_by: str, transferred: bool, failed: bool) -> str:
    """What became of a call, for containment reports.

    rejected: refused before answer by us (404, 488, 503 ...); abandoned: the caller hung up
    (before answer, or before the bot finished); transferred: handed to a person or another
    number; failed: the dialogue broke or the system ended it (error, time limit, shutdown);
    contained: the bot finished the call itself.
    """
    if transferred or hangup_by == "transfer":
        return "transferred"
    if not answered:
        return "rejected" if hangup_by == "system" else "abandoned"
    if failed:
        return "failed"
    if hangup_by == "caller":
        return "abandoned"
    if hangup_by == "bot":
        return "contained"
    return "failed"


def _has_event(session: Session, call_id: str, kind: str, *, ok: bool) -> bool:
    query = select(Event.seq).where(Event.call_id == call_id, Event.kind == kind, Event.ok == ok)
    return session.scalars(query.limit(1)).first() is not None


def _seconds(start: datetime | None, end: datetime) -> float | None:
    if start is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000.0, 3)
