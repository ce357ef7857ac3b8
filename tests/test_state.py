"""Live state: in memory and against the real Redis (db 15, a private key prefix per test)."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
import redis

from app.call.events import CallEnded, CallStarted, StepEntered, TurnCompleted
from app.state import LiveState, MemoryState, open_state
from app.state.redis import RedisState
from tests.conftest import REDIS_URL
from tests.tcp_proxy import ToggleProxy

_REDIS = urlsplit(REDIS_URL)  # from scripts/test-services, via the environment
REDIS_HOST, REDIS_PORT = _REDIS.hostname or "127.0.0.1", _REDIS.port or 6379
REDIS_DB = int(_REDIS.path.strip("/") or 0)
T0 = 1_700_000_000.0


def started(call_id: str, at: float = T0) -> CallStarted:
    return CallStarted(call_id, f"sip:{call_id}@caller", "sip:bot@pbx", "1000", "banking", "PCMU",
                       at, at + 0.2)  # fmt: skip


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}. "
            "Start it before running the live-state tests."
        )
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    value = f"sbtest:{uuid.uuid4().hex[:12]}"
    yield value
    keys = list(redis_client.scan_iter(f"{value}:*"))
    if keys:
        redis_client.delete(*keys)


StateFactory = Callable[..., LiveState]


@pytest.fixture(params=["memory", "redis"])
def make_state(request: pytest.FixtureRequest) -> Iterator[StateFactory]:
    made: list[LiveState] = []

    def factory(node: str = "node-a", ttl_s: int = 30) -> LiveState:
        if request.param == "memory":
            state: LiveState = MemoryState(node)
        else:
            prefix = request.getfixturevalue("prefix")
            state = RedisState(REDIS_URL, node, ttl_s, prefix=prefix)
            assert not state.degraded
        made.append(state)
        return state

    yield factory
    for state in made:
        state.close()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def test_start_step_end_and_count(make_state: StateFactory) -> None:
    state = make_state()
    state.on_call_event(started("c1", T0))
    state.on_call_event(started("c2", T0 + 1))
    state.on_call_event(StepEntered("c1", "pin", T0 + 2))
    state.on_call_event(
        TurnCompleted("c1", 0, "pin", "PIN?", "one", 0.9, "ps", None, None, None, None)
    )
    assert state.active_count() == 2

    calls = state.active_calls()
    assert [c.call_id for c in calls] == ["c1", "c2"]
    c1 = calls[0]
    assert (c1.node, c1.dialplan, c1.step) == ("node-a", "banking", "pin")
    assert (c1.from_uri, c1.to_uri) == ("sip:c1@caller", "sip:bot@pbx")
    assert c1.started_at == T0
    assert calls[1].step == ""

    state.on_call_event(CallEnded("c1", T0 + 9, "ANSWERED", "normal_clearing", "caller"))
    state.on_call_event(CallEnded("never-started", T0, "FAILED", "x", "system"))  # harmless
    state.step_entered("c1", "after-the-end")  # ignored, not resurrected
    assert state.active_count() == 1
    assert [c.call_id for c in state.active_calls()] == ["c2"]


def test_redis_state_is_shared_between_nodes(prefix: str) -> None:
    node_a = RedisState(REDIS_URL, "node-a", prefix=prefix)
    node_b = RedisState(REDIS_URL, "node-b", prefix=prefix)
    try:
        node_a.call_started(started("a1"))
        node_b.call_started(started("b1", T0 + 1))
        node_a.step_entered("a1", "menu")
        for observer in (node_a, node_b):
            assert observer.active_count() == 2
            assert [(c.call_id, c.node, c.step) for c in observer.active_calls()] == [
                ("a1", "node-a", "menu"),
                ("b1", "node-b", ""),
            ]
        node_b.call_ended("b1")
        assert node_a.active_count() == 1
    finally:
        node_a.close()
        node_b.close()


def test_dead_node_entries_expire_heartbeat_keeps_live_ones(
    prefix: str, redis_client: redis.Redis
) -> None:
    dead = RedisState(REDIS_URL, "dead", ttl_s=1, prefix=prefix)
    alive = RedisState(REDIS_URL, "alive", ttl_s=1, prefix=prefix)
    observer = RedisState(REDIS_URL, "observer", prefix=prefix)
    try:
        dead.call_started(started("d1"))
        alive.call_started(started("a1"))
        dead.close()  # the node dies: no heartbeat, no CallEnded
        assert observer.active_count() == 2
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            alive.heartbeat()
            time.sleep(0.25)
        assert observer.active_count() == 1
        assert [c.call_id for c in observer.active_calls()] == ["a1"]
        assert redis_client.exists(f"{prefix}:call:d1") == 0, "dead call's hash should expire"
        alive.heartbeat()  # prunes the dead entry from the index
        assert redis_client.zscore(f"{prefix}:calls", "d1") is None
    finally:
        alive.close()
        observer.close()


def test_degraded_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.state.redis")
    state = RedisState(f"redis://127.0.0.1:{_closed_port()}/0", "node-a")
    try:
        assert state.degraded
        start = time.monotonic()
        for i in range(50):
            state.call_started(started(f"c{i}", T0 + i))
            state.step_entered(f"c{i}", "menu")
        state.call_ended("c0")
        assert time.monotonic() - start < 0.5, "calls must not wait on a dead Redis"
        assert state.active_count() == 49
        assert state.active_calls()[0].call_id == "c1"
        assert state.active_calls()[0].step == "menu"
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        state.close()


def test_recovers_and_resyncs_when_redis_returns(prefix: str) -> None:
    proxy = ToggleProxy((REDIS_HOST, REDIS_PORT))
    state = RedisState(f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}", "node-a", prefix=prefix)
    observer = RedisState(REDIS_URL, "observer", prefix=prefix)
    try:
        assert state.degraded
        state.call_started(started("c1"))
        state.step_entered("c1", "menu")
        assert observer.active_count() == 0
        proxy.up()
        state.heartbeat()
        assert not state.degraded
        assert [(c.call_id, c.node, c.step) for c in observer.active_calls()] == [
            ("c1", "node-a", "menu")
        ]
    finally:
        state.close()
        observer.close()
        proxy.down()


def test_open_state_by_url(redis_client: redis.Redis) -> None:
    assert isinstance(open_state("memory://", "n"), MemoryState)
    state = open_state(REDIS_URL, "n")
    try:
        assert isinstance(state, RedisState)
    finally:
        state.close()
    with pytest.raises(ValueError, match="'sqlite'"):
        open_state("sqlite:///x.db", "n")
    with pytest.raises(ValueError, match="nonsense"):
        open_state("nonsense", "n")
