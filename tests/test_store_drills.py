"""Outage drills with real calls: PostgreSQL stopped while a SIP peer's calls are running, the
server killed with SIGKILL in the middle of a call, Redis stopped during calls. Every record
must reach the database once it is back, none twice; a crash loses at most the turn in flight;
calls go on without Redis and the cluster view converges when it returns.

These stop the servers the whole suite uses (`tests/services.py` always restarts them).
"""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.state.redis import RedisState
from app.store.db import open_engine
from app.store.models import Call, Event, Turn
from app.store.queries import get_call, get_turns
from tests.conftest import REDIS_URL
from tests.pg_schema import PG_HOST, PG_PORT, pg_url, postgres_problem, private_schema
from tests.server_process import ServerProcess
from tests.services import RedisServer, can_stop_postgres, postgres_stopped
from tests.sip import sipp
from tests.sip.ports import HOST
from tests.sip.rtp_pcap import build_digit_utterance, silence, write_rtp_pcap
from tests.tcp_proxy import ToggleProxy

pytestmark = [pytest.mark.sip, pytest.mark.postgres]

SPEAKER = "jackson"
PROMPTS_MS = 7500  # the demo dialplan's greeting and question, at eSpeak's pace


@pytest.fixture
def schema() -> Iterator[str]:
    problem = postgres_problem()
    if problem:
        pytest.fail(problem)
    with private_schema() as name:
        yield name


def _pcap(shared_data: Path, digits: str, workdir: Path) -> Path:
    speech = build_digit_utterance(shared_data, SPEAKER, digits, seed=int(digits))
    return write_rtp_pcap(silence(PROMPTS_MS) + speech + silence(1000), workdir / "c.pcap", "PCMU")


def _accepted_calls(log: str) -> list[str]:
    return re.findall(r"call (\S+) from .* -> dialplan demo", log)


def _counts(url: str, call_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """Per call: (call rows, turn rows, event rows)."""
    engine = open_engine(url)
    try:
        with Session(engine) as session:
            return {
                call_id: tuple(  # type: ignore[misc]
                    session.scalar(
                        select(func.count()).select_from(model).where(model.call_id == call_id)
                    )
                    for model in (Call, Turn, Event)
                )
                for call_id in call_ids
            }
    finally:
        engine.dispose()


def test_postgres_stopped_during_real_calls_loses_and_duplicates_nothing(
    schema: str, shared_data: Path, tmp_path: Path
) -> None:
    if reason := can_stop_postgres():
        pytest.skip(reason)
    url = pg_url(schema)
    server = ServerProcess.start({"SWITCHBOARD_STORE__URL": url}, tmp_path / "server")
    results: list[sipp.SippResult] = []

    def call(digits: str, name: str) -> None:
        workdir = tmp_path / name
        workdir.mkdir()
        results.append(
            sipp.speech_call(
                HOST, server.port, _pcap(shared_data, digits, workdir),
                wait_s=50, bye_from="server", workdir=workdir,
            )
        )  # fmt: skip

    try:
        first = [threading.Thread(target=call, args=(d, f"a{d}")) for d in ("8145", "3840")]
        for thread in first:
            thread.start()
        time.sleep(4.0)  # both calls answered and talking
        with postgres_stopped():
            for thread in first:
                thread.join(80)
            call("2718", "during")  # a whole call while the database is down
            assert "unavailable, keeping records in the spool" in server.log
            spooled = list((tmp_path / "server" / "spool").glob("*.log"))
            assert spooled and b"CallEnded" in b"".join(p.read_bytes() for p in spooled)
        assert all(r.ok for r in results), [r.describe() for r in results]
        call_ids = _accepted_calls(server.log)
        assert len(call_ids) == 3
        deadline = time.monotonic() + 60
        while "reachable again" not in server.log or _ended(url, call_ids) < 3:
            assert time.monotonic() < deadline, server.log[-3000:]
            time.sleep(0.5)
    finally:
        assert server.stop() == 0, server.log[-3000:]

    counts = _counts(url, call_ids)
    for call_id in call_ids:
        calls, turns, _events = counts[call_id]
        assert calls == 1
        assert turns >= 1, f"{call_id}: no turn recorded"
        indexes = [t["turn_index"] for t in get_turns(open_engine(url), call_id)]
        assert indexes == list(range(len(indexes))), indexes  # none missing, none twice
    assert "Traceback" not in server.log, server.log[-5000:]


def _ended(url: str, call_ids: list[str]) -> int:
    engine = open_engine(url)
    try:
        rows = [get_call(engine, call_id) for call_id in call_ids]
    except Exception:
        return 0
    finally:
        engine.dispose()
    return sum(1 for row in rows if row and row["ended_at"] is not None)


def test_sigkill_mid_call_then_restart_replays_the_spool(
    schema: str, shared_data: Path, tmp_path: Path
) -> None:
    """The database is unreachable (its port closed) while a call runs, so every record of the
    call is in the spool only; the server is killed after the caller's first answer. The next
    start replays the spool: the call's start, dialogue and answered turn are in the database;
    what was lost is what nobody could record (the call's end, the turn in flight)."""
    proxy = ToggleProxy((PG_HOST, PG_PORT))  # not up: connections refused
    url = pg_url(schema, port=proxy.port)
    workdir = tmp_path / "server"
    server = ServerProcess.start({"SWITCHBOARD_STORE__URL": url}, workdir)
    spool = workdir / "spool"
    done = threading.Event()

    def call() -> None:
        try:
            sipp.speech_call(
                HOST, server.port, _pcap(shared_data, "8145", tmp_path), wait_s=40,
                bye_from="server", workdir=tmp_path, timeout_s=45,
            )  # fmt: skip
        finally:
            done.set()

    caller = threading.Thread(target=call)
    caller.start()
    try:
        deadline = time.monotonic() + 40
        while not _spooled(spool, b'"type":"TurnCompleted"'):
            assert time.monotonic() < deadline, "no turn spooled:\n" + server.log[-3000:]
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    finally:
        caller.join(60)
    (call_id,) = _accepted_calls(server.log)
    assert not _spooled(spool, b'"type":"CallEnded"')  # killed mid-call

    proxy.up()
    restarted = ServerProcess.start({"SWITCHBOARD_STORE__URL": url}, workdir)
    try:
        assert "replaying them" in restarted.log  # the backlog of the killed run
        engine = open_engine(url)
        deadline = time.monotonic() + 30
        while not get_turns(engine, call_id):
            assert time.monotonic() < deadline, restarted.log[-3000:]
            time.sleep(0.3)
        call_row = get_call(engine, call_id)
        assert call_row is not None and call_row["dialplan"] == "demo"
        assert call_row["answered_at"] is not None and call_row["ended_at"] is None
        assert call_row["dialplan_version"] is not None  # DialogStarted replayed too
        assert [t["turn_index"] for t in get_turns(engine, call_id)] == [0]
        engine.dispose()
    finally:
        assert restarted.stop() == 0, restarted.log[-3000:]
        proxy.down()


def _spooled(spool: Path, needle: bytes) -> bool:
    return any(needle in path.read_bytes() for path in spool.glob("*.log"))


@pytest.mark.redis
def test_redis_stopped_during_real_calls_calls_go_on_and_state_converges(
    shared_data: Path, tmp_path: Path
) -> None:
    """Redis goes away while one call runs and another starts: both calls complete; the server
    says it is degraded; when Redis is back (empty: no persistence) the node writes its live
    calls again, and once they end none is left behind."""
    node = f"drill-{uuid.uuid4().hex[:8]}"
    server = ServerProcess.start(
        {"SWITCHBOARD_STATE__URL": REDIS_URL, "SWITCHBOARD_STATE__TTL_S": "3",
         "SWITCHBOARD_STATE__MAX_CALLS": "4", "SWITCHBOARD_SERVER__NODE": node},
        tmp_path / "server",
    )  # fmt: skip
    redis_server = RedisServer(tmp_path)
    observer = RedisState(REDIS_URL, "observer")
    results: list[sipp.SippResult] = []

    def call(digits: str) -> None:
        workdir = tmp_path / digits
        workdir.mkdir()
        results.append(
            sipp.speech_call(
                HOST, server.port, _pcap(shared_data, digits, workdir),
                wait_s=50, bye_from="server", workdir=workdir,
            )
        )  # fmt: skip

    def ours() -> set[str]:
        return {c.call_id for c in observer.active_calls() if c.node == node}

    try:
        first = threading.Thread(target=call, args=("8145",))
        first.start()
        _wait(lambda: len(ours()) == 1, 15, "the first call in Redis")
        redis_server.stop()
        second = threading.Thread(target=call, args=("3840",))
        second.start()
        _wait(lambda: len(_accepted_calls(server.log)) == 2, 15, "the second call answered")
        _wait(lambda: "switchboard degraded" in server.log, 10, "the server to say degraded")
        redis_server.start()
        accepted = set(_accepted_calls(server.log))
        _wait(lambda: ours() == accepted, 10, "the node to write its live calls back")
        first.join(60)
        second.join(60)
        assert len(results) == 2 and all(r.ok for r in results), [r.describe() for r in results]
        _wait(lambda: ours() == set(), 10, "ended calls to leave the cluster view")
        _wait(lambda: "switchboard healthy again" in server.log, 10, "the server to recover")
    finally:
        redis_server.start()
        observer.close()
        assert server.stop() == 0, server.log[-3000:]
    assert "Traceback" not in server.log, server.log[-5000:]


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
