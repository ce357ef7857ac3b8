"""End to end: a running `switchboard serve` reports a real call on /metrics while it happens
and after it ends, and says it is ready and alive.

baresip calls the demo line and speaks an account number (FSDD recordings from ../shared/data);
the bot reads it back and hangs up. We scrape the server's listener during the call and after.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import ServerProcess
from tests.sip import sipp
from tests.sip.baresip import BaresipResult, run_baresip_call
from tests.sip.ports import HOST
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.sip.wavfile import write_wav

pytestmark = pytest.mark.sip

PROMPTS_MS = 7500  # greeting and question at eSpeak's pace: the caller answers after them
CALL_WAIT_S = 30
STAGES = ("endpoint", "decide", "tts", "total")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess.start({}, tmp_path_factory.mktemp("metrics-server"))
    yield process
    code = process.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{process.log[-3000:]}"
    assert "Traceback" not in process.log, process.log[-5000:]


def get(server: ServerProcess, path: str) -> httpx.Response:
    return httpx.get(f"http://{HOST}:{server.http_port}{path}", timeout=5)


def scrape(server: ServerProcess) -> Samples:
    """Every sample of /metrics by (name, sorted labels)."""
    response = get(server, "/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def wait_for(server: ServerProcess, holds: Callable[[Samples], bool], timeout_s: float) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(server)
        if holds(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the condition: {samples}")
        time.sleep(0.2)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_ready_and_alive(server: ServerProcess) -> None:
    ready = get(server, "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True
    for check in ("sip", "dialplans", "engines", "store", "draining"):
        assert ready.json()["checks"][check] == {"ok": True}
    alive = get(server, "/livez")
    assert alive.status_code == 200, alive.text
    assert set(alive.json()["loops"]) == {"sip_loop", "main_loop"}


def test_a_call_is_counted_while_it_happens_and_after(
    server: ServerProcess, shared_data: Path, tmp_path: Path
) -> None:
    before = scrape(server)
    utterance = build_digit_utterance(shared_data, "jackson", "9075", seed=9075)
    speech = write_wav(
        tmp_path / "caller.wav", silence(PROMPTS_MS) + utterance + silence(1000), 8000
    )
    results: list[BaresipResult] = []
    caller = threading.Thread(
        target=lambda: results.append(
            run_baresip_call(server.uri(), speech, "PCMU", CALL_WAIT_S, tmp_path / "baresip")
        )
    )
    caller.start()
    try:
        during = wait_for(server, lambda s: value(s, "switchboard_active_calls") == 1, timeout_s=15)
        assert value(during, "switchboard_active_calls") == 1
    finally:
        caller.join(CALL_WAIT_S + 30)
    assert results and results[0].established, results[0].describe() if results else "no call"
    assert results[0].closed_by == "remote", results[0].describe()  # the bot hung up

    def counted(samples: Samples) -> bool:
        ended = value(samples, "switchboard_calls_total", outcome="bot_hangup")
        return ended > value(before, "switchboard_calls_total", outcome="bot_hangup")

    after = wait_for(server, counted, timeout_s=10)
    assert value(after, "switchboard_active_calls") == 0
    for stage in STAGES:
        count = value(after, "switchboard_turn_latency_seconds_count", stage=stage)
        assert count >= 1, (stage, after)
        total = value(after, "switchboard_turn_latency_seconds_sum", stage=stage)
        assert 0 <= total < 10 * count, (stage, total)
    assert value(after, "switchboard_store_spool_depth") >= 0
    assert (
        "switchboard_engine_circuit_open",
        (("engine", "pocketsphinx"), ("service", "asr")),
    ) in (after)


def test_rejections_are_counted_by_reason(server: ServerProcess, tmp_path: Path) -> None:
    before = value(scrape(server), "switchboard_rejected_total", reason="not_found")
    result = sipp.expect_status(HOST, server.port, 404, service="9999", workdir=tmp_path)
    assert result.ok, result.describe()
    after = wait_for(
        server,
        lambda s: value(s, "switchboard_rejected_total", reason="not_found") > before,
        timeout_s=5,
    )
    assert value(after, "switchboard_calls_total", outcome="failed") >= 1


def test_metrics_port_in_use_stops_the_server_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AssertionError) as failed:
            ServerProcess.start({"SWITCHBOARD_HTTP__PORT": str(port)}, tmp_path, timeout=60)
    message = str(failed.value)
    assert "server exited with 1" in message, message[-2000:]
    assert f"cannot listen for metrics and health on {HOST}:{port}" in message
