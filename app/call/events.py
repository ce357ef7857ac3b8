"""Call events: what happened on a call, for observers (records, live state, metrics).

The SIP adapter and the call session publish these; observers such as the call-record store and
the live-state registry subscribe. Observers must return quickly: they run on the publishing
thread, so anything slow (a database write) goes to the observer's own worker.
Timestamps are UNIX epoch seconds (`time.time()`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallStarted:
    """An INVITE arrived and was answered, or rejected (then `answered_at` is None and a
    `CallEnded` with the rejection follows at once)."""

    call_id: str
    from_uri: str
    to_uri: str
    dialled: str
    dialplan: str
    codec: str
    started_at: float
    answered_at: float | None
    source: str = ""  # the signalling peer's address, host:port (the CDR's channel)


@dataclass(frozen=True, slots=True)
class StepEntered:
    """The dialogue moved to a step of its dialplan."""

    call_id: str
    step: str
    at: float


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    """One exchange: the bot's prompt, what the caller said, and when each stage finished.

    The latency budget of a turn, stage by stage (epoch seconds; None when a stage did not
    happen): `speech_end_at`, end of the caller's speech as the endpointer saw it;
    `asr_final_at`, final recognition result; `decided_at`, the dialogue chose its next action;
    `tts_ready_at`, first audio of the reply ready for playout; `first_audio_at`, first frame
    of the reply taken by the media clock (None when nothing was played after this turn, e.g.
    the caller hung up). `barge_in`: the answer began while the prompt was playing.
    `end_silence_ms`: the silence that ended the answer (adaptive endpointing).
    `engine` recognised the answer, `tts_engine` spoke the reply ("cache": the prompt cache);
    `fallbacks` says why engines of a fallback chain before them did not ("asr whisper: ...").
    `result`: what the dialogue made of the answer: "matched", "no_match" (heard, but not a
    valid answer), "no_input" (nothing heard), None when not known (the call ended first).
    """

    call_id: str
    index: int
    step: str
    prompt: str
    transcript: str
    confidence: float
    engine: str
    grammar: str | None
    speech_end_at: float | None
    asr_final_at: float | None
    first_audio_at: float | None
    decided_at: float | None = None
    tts_ready_at: float | None = None
    barge_in: bool = False
    end_silence_ms: int | None = None
    tts_engine: str | None = None
    fallbacks: tuple[str, ...] = ()
    result: str | None = None


@dataclass(frozen=True, slots=True)
class DialogStarted:
    """The call's dialogue began on `dialplan` at `version` (the file's SHA-256)."""

    call_id: str
    dialplan: str
    version: str
    at: float


@dataclass(frozen=True, slots=True)
class VariableSet:
    """A dialplan variable got a value (sensitive values arrive already redacted)."""

    call_id: str
    step: str
    name: str
    value: str
    at: float


@dataclass(frozen=True, slots=True)
class StepResult:
    """Something that happened at a step besides a turn: how a step that reaches outside the
    call went (kind "webhook", "llm", "transfer", "recording", "agent"), a DTMF answer
    ("dtmf", the keys as detail, redacted on sensitive steps), an engine that a fallback chain
    passed over ("fallback"), a failure of the dialogue ("error"). `detail` is the error when
    `ok` is False. Recorded as a row of the `events` table."""

    call_id: str
    step: str
    kind: str
    ok: bool
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over. `disposition` is ANSWERED, NO ANSWER, BUSY or FAILED (CDR terms)."""

    call_id: str
    ended_at: float
    disposition: str
    hangup_cause: str
    hangup_by: str


CallEvent = (
    CallStarted | StepEntered | TurnCompleted | DialogStarted | VariableSet | StepResult | CallEnded
)


class CallObserver(Protocol):
    """Anything that wants call events. Must not block the caller."""

    def on_call_event(self, event: CallEvent) -> None: ...


class EventBus:
    """Fans events out to observers; one observer's failure never reaches the call.

    `transform` rewrites each event once before any observer sees it: the server redacts PII
    there, so neither the records, the spool nor the dashboards' channel ever hold it."""

    def __init__(
        self,
        observers: list[CallObserver] | None = None,
        transform: Callable[[CallEvent], CallEvent] | None = None,
    ) -> None:
        self._observers: list[CallObserver] = list(observers or [])
        self._transform = transform

    def subscribe(self, observer: CallObserver) -> None:
        self._observers.append(observer)

    def publish(self, event: CallEvent) -> None:
        if self._transform is not None:
            try:
                event = self._transform(event)
            except Exception:
                log.exception("call event transform failed on %s", type(event).__name__)
                return  # never pass on an event whose redaction failed
        for observer in self._observers:
            try:
                observer.on_call_event(event)
            except Exception:
                log.exception("observer %r failed on %s", observer, type(event).__name__)
