"""How each call event changes the call-record tables.

Every event is an upsert keyed by call_id or (call_id, index) that sets only the fields the
event owns, and derived columns are recomputed from the row. So replaying events never
duplicates a row, and a turn or an end seen before its start (the start lost, or replayed later)
still lands: a stub `calls` row is created and filled in when the start arrives.
"""

from __future__ import annotations

from datetime import UTC, datetime

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
from app.store.models import Call, CallVariable, StepRecord, Turn


def apply_event(session: Session, event: CallEvent, node: str) -> None:
    """Stage the effect of `event` in `session`; the caller commits."""
    if isinstance(event, CallStarted):
        call = _call(session, event.call_id, node)
        call.from_uri = event.from_uri
        call.to_uri = event.to_uri
        call.dialled = event.dialled
        call.dialplan = event.dialplan
        call.codec = event.codec
        call.started_at = _ts(event.started_at)
        call.answered_at = _ts(event.answered_at)
        _derive_call(call)
    elif isinstance(event, TurnCompleted):
        _call(session, event.call_id, node)  # the FK needs the call, even a stub
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
    elif isinstance(event, CallEnded):
        call = _call(session, event.call_id, node)
        call.ended_at = _ts(event.ended_at)
        call.disposition = event.disposition
        call.hangup_cause = event.hangup_cause
        call.hangup_by = event.hangup_by
        _derive_call(call)
    elif isinstance(event, DialogStarted):
        call = _call(session, event.call_id, node)
        call.dialplan = event.dialplan
        call.dialplan_version = event.version
    elif isinstance(event, VariableSet):
        _call(session, event.call_id, node)
        variable = session.get(CallVariable, (event.call_id, event.name))
        if variable is None:
            variable = CallVariable(call_id=event.call_id, name=event.name)
            session.add(variable)
        variable.value = event.value
        variable.step = event.step
        variable.set_at = _ts(event.at)
    elif isinstance(event, StepResult):
        _call(session, event.call_id, node)
        session.add(
            StepRecord(
                call_id=event.call_id,
                step=event.step,
                kind=event.kind,
                ok=event.ok,
                detail=event.detail,
                at=_ts(event.at),
            )
        )
    elif isinstance(event, StepEntered):
        pass  # the current step is live state (app.state); each turn records its own step
    else:
        raise TypeError(f"not a call event: {event!r}")


def _call(session: Session, call_id: str, node: str) -> Call:
    call = session.get(Call, call_id)
    if call is None:
        call = Call(call_id=call_id, node=node)
        session.add(call)
        session.flush()  # the row must exist before a turn references it
    return call


def _derive_call(call: Call) -> None:
    """Asterisk CDR rules: duration from start to end; billsec from answer to end, 0 unanswered."""
    if call.ended_at is None:
        call.duration_s = None
        call.billsec_s = None
        return
    call.duration_s = _seconds(call.started_at, call.ended_at)
    if call.answered_at is not None and call.disposition in (None, "ANSWERED"):
        call.billsec_s = _seconds(call.answered_at, call.ended_at)
    else:
        call.billsec_s = 0.0


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
