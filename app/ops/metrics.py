"""Prometheus metrics of a running server, fed by call events and read at scrape time.

`Metrics` is a call-event observer (`on_call_event`): it counts per event, never per frame, so
a call costs a handful of counter updates. What is a state rather than an event (the spool
depth, live state's outage flag, circuit breakers) is read only when Prometheus scrapes, by a
collector over callbacks. Each `Metrics` owns its registry, so tests can build many.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.call.events import CallEnded, CallEvent, CallStarted, TurnCompleted

LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
"""Seconds: a voice bot's turn stages live between tens of milliseconds and a few seconds."""

TURN_STAGES = (
    ("endpoint", "speech_end_at", "asr_final_at"),
    ("decide", "asr_final_at", "decided_at"),
    ("tts", "decided_at", "tts_ready_at"),
    ("playout", "tts_ready_at", "first_audio_at"),
    ("total", "speech_end_at", "first_audio_at"),
)
"""(stage label, from, to): the `TurnCompleted` timestamps each latency stage spans."""

_ANSWERED_OUTCOMES = {
    "bot": "bot_hangup",
    "caller": "caller_hangup",
    "transfer": "transferred",
    "system": "system_hangup",
}
_UNANSWERED_OUTCOMES = {"NO ANSWER": "no_answer", "BUSY": "busy", "FAILED": "failed"}

_REJECTION_REASONS = {
    400: "bad_request",
    401: "auth_challenge",  # a digest challenge: the first answer to every peer with credentials
    403: "forbidden",
    404: "not_found",
    405: "method",
    407: "auth_challenge",
    488: "codec",
    500: "error",
    503: "capacity",
}


def call_outcome(event: CallEnded) -> str:
    """The `outcome` label of a finished call: who hung up an answered call, else why it was
    not answered."""
    if event.disposition == "ANSWERED":
        return _ANSWERED_OUTCOMES.get(event.hangup_by, "answered")
    return _UNANSWERED_OUTCOMES.get(event.disposition, "failed")


def rejection_reason(status: int) -> str:
    """A `reason` label for a rejection known only by its SIP status (a caller that knows
    better, e.g. draining or an ACL, passes its own)."""
    return _REJECTION_REASONS.get(status, str(status))


class StoreHealth(Protocol):
    """What the call recorder tells about its backlog (`CallRecorder`)."""

    @property
    def spool_depth(self) -> int: ...

    @property
    def degraded(self) -> bool: ...

    @property
    def dropped(self) -> int: ...


class StateHealth(Protocol):
    """Live state's own report (`LiveState.status()`)."""

    def status(self) -> Mapping[str, Any]: ...


class Guard(Protocol):
    """An engine's place in a fallback chain (`app.resilience.EngineGuard`)."""

    name: str
    breaker: Any


_EDGE_REASONS = {
    "acl_denied": "acl",
    "flood_banned": "flood",
    "banned": "flood",
    "ua_blocked": "user_agent",
    "multipart_refused": "multipart",
}


class Metrics:
    """The server's metrics. Thread-safe: events arrive on call workers and the SIP loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.active_calls = Gauge(
            "switchboard_active_calls", "Calls answered and not yet ended.", registry=registry
        )
        self.calls = Counter(
            "switchboard_calls",
            "Calls ended, by outcome (bot_hangup, caller_hangup, transferred, system_hangup, "
            "no_answer, busy, failed).",
            ["outcome"],
            registry=registry,
        )
        self.sip_responses = Counter(
            "switchboard_sip_responses",
            "SIP responses sent, by status code.",
            ["code"],
            registry=registry,
        )
        self.rejections = Counter(
            "switchboard_rejected",
            "INVITEs refused, by reason (not_found, codec, capacity, draining, acl, ...).",
            ["reason"],
            registry=registry,
        )
        self.turn_latency = Histogram(
            "switchboard_turn_latency_seconds",
            "Latency of each stage of a turn: endpoint (end of speech to final recognition), "
            "decide, tts (first reply audio ready), playout, total (end of speech to first "
            "reply audio played).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "switchboard_engine_fallbacks",
            "Turns on which a fallback chain passed over an engine (failed or skipped).",
            ["service", "engine"],
            registry=registry,
        )
        self._scrape = _ScrapeCollector()
        registry.register(self._scrape)
        self._lock = threading.Lock()
        self._active: set[str] = set()

    # ------------------------------------------------------------------ events and calls

    def on_call_event(self, event: CallEvent) -> None:
        """`CallObserver`: a few counter updates per event, on the publishing thread."""
        if isinstance(event, CallStarted):
            if event.answered_at is not None:
                self._set_active(event.call_id, True)
        elif isinstance(event, CallEnded):
            self._set_active(event.call_id, False)
            self.calls.labels(call_outcome(event)).inc()
        elif isinstance(event, TurnCompleted):
            self._observe_turn(event)

    def sip_response(self, code: int) -> None:
        """One SIP response the server sent (any method, any status)."""
        self.sip_responses.labels(str(code)).inc()

    def rejected(self, reason: str) -> None:
        """One INVITE refused before it was answered."""
        self.rejections.labels(reason).inc()

    def edge_refused(self, kind: str) -> None:
        """One request the SIP edge refused or dropped (`app.sip.security` verdict kinds)."""
        self.rejections.labels(_EDGE_REASONS.get(kind, kind)).inc()

    def _set_active(self, call_id: str, active: bool) -> None:
        with self._lock:
            if active:
                self._active.add(call_id)
            else:
                self._active.discard(call_id)
            self.active_calls.set(len(self._active))

    def _observe_turn(self, turn: TurnCompleted) -> None:
        for stage, start, end in TURN_STAGES:
            began, ended = getattr(turn, start), getattr(turn, end)
            if began is not None and ended is not None and ended >= began:
                self.turn_latency.labels(stage).observe(ended - began)
        for note in turn.fallbacks:
            service, engine = _passed_over(note)
            if service:
                self.fallbacks.labels(service, engine).inc()

    # ------------------------------------------------------------------ scrape-time state

    def watch_store(self, store: StoreHealth) -> None:
        self._scrape.store = store

    def watch_state(self, state: StateHealth) -> None:
        self._scrape.state = state

    def watch_engines(self, service: str, guards: Iterable[Guard]) -> None:
        """The guards of a fallback chain: their circuit breakers are reported at scrape."""
        self._scrape.engines[service] = tuple(guards)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


def _passed_over(note: str) -> tuple[str, str]:
    """("asr", "whisper") from a turn's fallback note "asr whisper: skipped, ..." (empty
    strings for a note of another shape)."""
    head = note.split(":", 1)[0].split()
    return (head[0], head[1]) if len(head) == 2 else ("", "")


class _ScrapeCollector(Collector):
    """Reads the store, live state and the circuit breakers when Prometheus scrapes."""

    def __init__(self) -> None:
        self.store: StoreHealth | None = None
        self.state: StateHealth | None = None
        self.engines: dict[str, Sequence[Guard]] = {}

    def describe(self) -> list[Metric]:
        return []  # families appear as things are watched; nothing to check up front

    def collect(self) -> Iterable[Metric]:
        yield from _gauges(
            ("switchboard_store_spool_depth", "Call records on disk waiting for the database."),
            None if self.store is None else self.store.spool_depth,
        )
        yield from _gauges(
            ("switchboard_store_degraded", "1 while the call-record database is unreachable."),
            None if self.store is None else int(self.store.degraded),
        )
        if self.store is not None:
            yield CounterMetricFamily(
                "switchboard_store_dropped",
                "Call events lost because the recorder's queue was full.",
                value=self.store.dropped,
            )
        yield from _gauges(
            ("switchboard_state_degraded", "1 while live state is local only (Redis outage)."),
            None if self.state is None else int(bool(self.state.status().get("degraded"))),
        )
        yield from self._engines()

    def _engines(self) -> Iterator[Metric]:
        if not self.engines:
            return
        circuit = GaugeMetricFamily(
            "switchboard_engine_circuit_open",
            "1 while an engine's circuit breaker is open or half-open (not yet recovered).",
            labels=["service", "engine"],
        )
        errors = CounterMetricFamily(
            "switchboard_engine_errors",
            "Failures counted against an engine's circuit breaker (error, stall, timeout).",
            labels=["service", "engine"],
        )
        for service, guards in self.engines.items():
            for guard in guards:
                labels = [service, guard.name]
                circuit.add_metric(labels, 0 if guard.breaker.state == "closed" else 1)
                errors.add_metric(labels, guard.breaker.failures_total)
        yield circuit
        yield errors


def _gauges(name_help: tuple[str, str], value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(*name_help, value=value)
