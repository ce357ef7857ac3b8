"""The operations listener over real HTTP on loopback: /livez, /readyz, /metrics, 404, and a
port in use refused at start."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.call.events import CallStarted
from app.ops.health import Heartbeat, Liveness, Readiness, chain
from app.ops.http import ListenerError, OpsHttpServer
from app.ops.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Ops:
    listener: OpsHttpServer
    clock: FakeClock
    metrics: Metrics
    readiness: Readiness
    problems: dict[str, str | None]
    beats: tuple[Heartbeat, Heartbeat]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.listener.port}{path}", timeout=5)


@pytest.fixture
def ops() -> Iterator[Ops]:
    clock = FakeClock()
    liveness = Liveness(clock)
    sip = liveness.heartbeat("sip_loop", stale_after_s=5)
    main = liveness.heartbeat("main_loop", stale_after_s=10)
    problems: dict[str, str | None] = {"sip": None, "store": None}
    readiness = Readiness({name: (lambda n=name: problems[n]) for name in problems})
    metrics = Metrics()
    listener = OpsHttpServer("127.0.0.1", 0, metrics, liveness, readiness)
    listener.start()
    yield Ops(listener, clock, metrics, readiness, problems, (sip, main))
    listener.stop()


def test_livez_200_while_loops_beat_and_503_naming_the_stale_one(ops: Ops) -> None:
    sip, main = ops.beats
    response = ops.get("/livez")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["alive"] is True

    ops.clock.now += 6  # the SIP loop has not beaten for 6 s; the main loop's limit is 10 s
    main.beat()
    response = ops.get("/livez")
    assert response.status_code == 503
    body = response.json()
    assert body["alive"] is False
    assert body["loops"]["sip_loop"] == {"ok": False, "age_s": 6.0}
    assert body["loops"]["main_loop"]["ok"] is True

    sip.beat()
    assert ops.get("/livez").status_code == 200


def test_readyz_200_then_503_naming_each_failing_check(ops: Ops) -> None:
    response = ops.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "failing": [],
        "checks": {"sip": {"ok": True}, "store": {"ok": True}, "draining": {"ok": True}},
    }
    ops.problems["store"] = "call records are not being kept"
    response = ops.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["store"]
    assert body["checks"]["store"] == {"ok": False, "problem": "call records are not being kept"}

    ops.problems["store"] = None
    ops.readiness.set_draining()
    body = ops.get("/readyz").json()
    assert body["ready"] is False and body["failing"] == ["draining"]
    ops.readiness.set_draining(False)
    assert ops.get("/readyz").status_code == 200


def test_readiness_follows_a_draining_callable_and_survives_a_raising_check() -> None:
    draining = [False]

    def broken() -> str | None:
        raise RuntimeError("database handle gone")

    readiness = Readiness({"store": broken}, draining=lambda: draining[0])
    ready, body = readiness.report()
    assert not ready and body["failing"] == ["store"]
    assert "RuntimeError: database handle gone" in body["checks"]["store"]["problem"]
    draining[0] = True
    assert readiness.report()[1]["failing"] == ["store", "draining"]


def test_metrics_in_prometheus_text_format(ops: Ops) -> None:
    ops.metrics.on_call_event(
        CallStarted("c1", "sip:a@b", "sip:1000@sb", "1000", "demo", "PCMU", 1.0, 1.1)
    )
    ops.metrics.sip_response(200)
    response = ops.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name in (
        "switchboard_active_calls",
        "switchboard_calls",
        "switchboard_sip_responses",
        "switchboard_rejected",
        "switchboard_turn_latency_seconds",
        "switchboard_engine_fallbacks",
    ):
        assert name in families, sorted(families)
    assert families["switchboard_active_calls"].samples[0].value == 1
    assert families["switchboard_turn_latency_seconds"].type == "histogram"
    sample = families["switchboard_sip_responses"].samples[0]
    assert sample.labels == {"code": "200"} and sample.value == 1


def test_unknown_path_is_404(ops: Ops) -> None:
    response = ops.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not found: /nope"}


def test_port_in_use_is_refused_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenerError, match=f"on 127.0.0.1:{port}: Address already in use"):
            OpsHttpServer("127.0.0.1", port, Metrics(), Liveness(), Readiness())


def test_chained_heartbeats_all_run() -> None:
    calls: list[str] = []
    beat = chain(lambda: calls.append("ours"), None, lambda: calls.append("watchdog"))
    assert beat is not None
    beat()
    assert calls == ["ours", "watchdog"]
    assert chain(None, None) is None
