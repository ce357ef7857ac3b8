"""`Metrics` fed real call events: the values Prometheus would scrape, read from its registry."""

from __future__ import annotations

from app.call.events import CallEnded, CallStarted, EventBus, StepEntered, TurnCompleted
from app.ops.metrics import LATENCY_BUCKETS, Metrics, call_outcome, rejection_reason
from app.resilience import CircuitBreaker, EngineGuard, Limits

T0 = 1_700_000_000.0


def started(call_id: str, answered: bool = True) -> CallStarted:
    return CallStarted(
        call_id, "sip:caller@example.org", "sip:1000@sb", "1000", "demo", "PCMU", T0,
        T0 + 0.1 if answered else None,
    )  # fmt: skip


def ended(call_id: str, disposition: str = "ANSWERED", by: str = "bot") -> CallEnded:
    return CallEnded(call_id, T0 + 30, disposition, "200 OK", by)


def turn(**times: float | None) -> TurnCompleted:
    base = {
        "speech_end_at": T0 + 10.0,
        "asr_final_at": T0 + 10.3,
        "decided_at": T0 + 10.32,
        "tts_ready_at": T0 + 10.5,
        "first_audio_at": T0 + 10.54,
    }
    base.update(times)
    return TurnCompleted(
        call_id="c1", index=0, step="ask", prompt="Your account?", transcript="one two",
        confidence=0.9, engine="pocketsphinx", grammar="digits", **base,
    )  # fmt: skip


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_active_calls_follow_answered_calls_only() -> None:
    metrics = Metrics()
    bus = EventBus([metrics])
    bus.publish(started("a"))
    bus.publish(started("b"))
    bus.publish(StepEntered("a", "greet", T0))
    assert value(metrics, "switchboard_active_calls") == 2
    bus.publish(started("rejected", answered=False))  # a rejection: never active
    bus.publish(ended("rejected", "BUSY", "system"))
    assert value(metrics, "switchboard_active_calls") == 2
    bus.publish(ended("a"))
    bus.publish(ended("a"))  # a duplicate end cannot drive the gauge below the truth
    assert value(metrics, "switchboard_active_calls") == 1
    bus.publish(ended("b", by="caller"))
    assert value(metrics, "switchboard_active_calls") == 0


def test_calls_total_by_outcome() -> None:
    metrics = Metrics()
    for call_id, disposition, by in [
        ("1", "ANSWERED", "bot"), ("2", "ANSWERED", "bot"), ("3", "ANSWERED", "caller"),
        ("4", "ANSWERED", "transfer"), ("5", "ANSWERED", "system"), ("6", "NO ANSWER", "caller"),
        ("7", "BUSY", "system"), ("8", "FAILED", "system"),
    ]:  # fmt: skip
        metrics.on_call_event(ended(call_id, disposition, by))
    expected = {
        "bot_hangup": 2, "caller_hangup": 1, "transferred": 1, "system_hangup": 1,
        "no_answer": 1, "busy": 1, "failed": 1,
    }  # fmt: skip
    for outcome, count in expected.items():
        assert value(metrics, "switchboard_calls_total", outcome=outcome) == count, outcome
    assert call_outcome(ended("x", "ANSWERED", "")) == "answered"


def test_turn_latency_per_stage() -> None:
    metrics = Metrics()
    metrics.on_call_event(turn())
    metrics.on_call_event(turn(speech_end_at=T0 + 9.0))  # a slower endpoint: 1.3 s
    name = "switchboard_turn_latency_seconds"
    for stage in ("endpoint", "decide", "tts", "playout", "total"):
        assert value(metrics, f"{name}_count", stage=stage) == 2, stage
    assert abs(value(metrics, f"{name}_sum", stage="decide") - 2 * 0.02) < 1e-6
    assert abs(value(metrics, f"{name}_sum", stage="endpoint") - (0.3 + 1.3)) < 1e-6
    assert abs(value(metrics, f"{name}_sum", stage="total") - (0.54 + 1.54)) < 1e-6
    # bucket boundaries: the 0.3 s endpoint is in le=0.3, the 1.3 s one only from le=1.5
    assert value(metrics, f"{name}_bucket", stage="endpoint", le="0.3") == 1
    assert value(metrics, f"{name}_bucket", stage="endpoint", le="1.5") == 2
    assert LATENCY_BUCKETS[0] == 0.05 and LATENCY_BUCKETS[-1] == 5.0


def test_turn_without_a_stage_observes_only_the_stages_it_has() -> None:
    metrics = Metrics()
    # no input: nothing heard, so no end of speech; the caller hung up before any reply
    metrics.on_call_event(turn(speech_end_at=None, first_audio_at=None))
    name = "switchboard_turn_latency_seconds_count"
    assert value(metrics, name, stage="endpoint") is None
    assert value(metrics, name, stage="total") is None
    assert value(metrics, name, stage="playout") is None
    assert value(metrics, name, stage="decide") == 1
    assert value(metrics, name, stage="tts") == 1


def test_fallbacks_counted_per_engine_passed_over() -> None:
    metrics = Metrics()
    metrics.on_call_event(
        TurnCompleted(
            call_id="c1", index=0, step="ask", prompt="p", transcript="t", confidence=0.5,
            engine="vosk", grammar=None, speech_end_at=None, asr_final_at=None,
            first_audio_at=None,
            fallbacks=(
                "asr whisper: skipped, circuit open for 20 s more (last error: boom)",
                "tts piper: no audio for 1500 ms",
            ),
        )
    )  # fmt: skip
    name = "switchboard_engine_fallbacks_total"
    assert value(metrics, name, service="asr", engine="whisper") == 1
    assert value(metrics, name, service="tts", engine="piper") == 1


def test_sip_responses_and_rejections() -> None:
    metrics = Metrics()
    for code in (100, 180, 200, 200, 404):
        metrics.sip_response(code)
    assert value(metrics, "switchboard_sip_responses_total", code="200") == 2
    assert value(metrics, "switchboard_sip_responses_total", code="404") == 1
    metrics.rejected(rejection_reason(404))
    metrics.rejected(rejection_reason(488))
    metrics.rejected(rejection_reason(503))
    metrics.rejected("draining")
    metrics.rejected("acl")
    for reason in ("not_found", "codec", "capacity", "draining", "acl"):
        assert value(metrics, "switchboard_rejected_total", reason=reason) == 1, reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for `CallRecorder`'s health properties (the real one needs a database)."""

    def __init__(self) -> None:
        self.spool_depth, self.degraded, self.dropped = 0, False, 0


class State:
    def __init__(self) -> None:
        self.degraded = False

    def status(self) -> dict[str, object]:
        return {"backend": "redis", "degraded": self.degraded}


def test_scrape_time_values_read_store_state_and_breakers() -> None:
    metrics = Metrics()
    recorder, state, clock = Recorder(), State(), FakeClock()
    breaker = CircuitBreaker("asr whisper", failures=2, cooldown_s=30, clock=clock)
    guards = [
        EngineGuard("whisper", Limits(), breaker),
        EngineGuard("pocketsphinx", Limits(), CircuitBreaker("asr pocketsphinx")),
    ]
    metrics.watch_store(recorder)
    metrics.watch_state(state)
    metrics.watch_engines("asr", guards)
    assert value(metrics, "switchboard_store_spool_depth") == 0
    assert value(metrics, "switchboard_state_degraded") == 0
    assert value(metrics, "switchboard_engine_circuit_open", service="asr", engine="whisper") == 0

    recorder.spool_depth, recorder.degraded, recorder.dropped = 42, True, 3
    state.degraded = True
    breaker.failure("timeout")
    breaker.failure("timeout")  # the second failure in a row opens the circuit
    assert value(metrics, "switchboard_store_spool_depth") == 42
    assert value(metrics, "switchboard_store_degraded") == 1
    assert value(metrics, "switchboard_store_dropped_total") == 3
    assert value(metrics, "switchboard_state_degraded") == 1
    labels = {"service": "asr", "engine": "whisper"}
    assert value(metrics, "switchboard_engine_circuit_open", **labels) == 1
    assert value(metrics, "switchboard_engine_errors_total", **labels) == 2
    other = {"service": "asr", "engine": "pocketsphinx"}
    assert value(metrics, "switchboard_engine_circuit_open", **other) == 0

    breaker.success()  # errors stay counted; the circuit closes
    assert value(metrics, "switchboard_engine_circuit_open", **labels) == 0
    assert value(metrics, "switchboard_engine_errors_total", **labels) == 2


def test_registries_are_independent_and_expose_text_format() -> None:
    first, second = Metrics(), Metrics()
    first.on_call_event(started("a"))
    assert value(first, "switchboard_active_calls") == 1
    assert value(second, "switchboard_active_calls") == 0
    text = first.exposition().decode()
    assert "# TYPE switchboard_active_calls gauge" in text
    assert "# TYPE switchboard_turn_latency_seconds histogram" in text
    assert "switchboard_active_calls 1.0" in text
