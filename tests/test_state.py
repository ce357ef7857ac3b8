"""Live state: in memory and against the real Redis (db 15, a private key prefix per test)."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from app.call.events import CallEnded, CallEvent, CallStarted, StepEntered, TurnCompleted
from app.state import LiveState, MemoryState, open_state
from app.state.redis import RedisState
from tests.conftest import REDIS_URL
from tests.services import RedisServer
from tests.tcp_proxy import ToggleProxy

_REDIS = urlsplit(REDIS_URL)  # from scripts/test-services, via the environment
REDIS_HOST, REDIS_PORT = _REDIS.hostname or "127.0.0.1", _REDIS.port or 6379
REDIS_DB = int(_REDIS.path.strip("/") or 0)
T0 = 1_700_000_000.0


def started(call_id: str, at: float = T0) -> CallStarted:
    return CallStarted(call_id, f"sip:{call_id}@caller", "sip:bot@pbx", "1000", "banking", "PCMU",
                       at, at + 0.2)  # fmt: skip


def rejected(call_id: str) -> CallStarted:
    return CallStarted(call_id, "sip:x@caller", "sip:bot@pbx", "1000", "banking", "PCMU", T0, None)


def ended(call_id: str) -> CallEnded:
    return CallEnded(call_id, T0 + 9, "ANSWERED", "normal_clearing", "caller")


def turn(call_id: str) -> TurnCompleted:
    return TurnCompleted(call_id, 0, "pin", "PIN?", "one", 0.9, "ps", None, None, None, None)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


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

    def factory(node: str = "node-a", ttl_s: int = 30, reservation_s: float = 10.0) -> LiveState:
        if request.param == "memory":
            state: LiveState = MemoryState(node, reservation_s=reservation_s)
        else:
            prefix = request.getfixturevalue("prefix")
            state = RedisState(REDIS_URL, node, ttl_s, prefix=prefix, reservation_s=reservation_s)
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


def test_dead_node_entries_expire_heartbeat_thread_keeps_live_ones(
    prefix: str, redis_client: redis.Redis
) -> None:
    dead = RedisState(REDIS_URL, "dead", ttl_s=3, prefix=prefix)
    alive = RedisState(REDIS_URL, "alive", ttl_s=3, prefix=prefix)
    observer = RedisState(REDIS_URL, "observer", prefix=prefix)
    try:
        dead.start()
        alive.start()
        dead.call_started(started("d1"))
        alive.call_started(started("a1"))
        dead.close()  # the node dies: no more heartbeats, no CallEnded
        died_at = time.monotonic()
        while observer.active_count() == 2:
            assert time.monotonic() - died_at < 4.5, "the dead node's call should expire"
            time.sleep(0.1)
        assert time.monotonic() - died_at > 1.5, "entries must outlive a few missed heartbeats"
        # a1 was written with d1 and is past its first TTL too: only the heartbeat kept it
        assert [c.call_id for c in observer.active_calls()] == ["a1"]
        assert redis_client.exists(f"{prefix}:call:d1") == 0, "dead call's hash should expire"
        wait_for(
            lambda: redis_client.zscore(f"{prefix}:calls", "d1") is None,
            2.0,
            "the live node's heartbeat to prune the dead entry from the index",
        )
    finally:
        alive.close()
        observer.close()


def test_degraded_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.state.redis")
    opened = time.monotonic()
    state = RedisState(f"redis://127.0.0.1:{_closed_port()}/0", "node-a")
    try:
        assert time.monotonic() - opened < 0.6, "a down Redis must not delay start-up"
        assert state.degraded
        assert state.status()["degraded"]
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
    assert isinstance(open_state("memory://", "n", ttl_s=7, channel="x"), MemoryState)
    state = open_state(REDIS_URL, "n", ttl_s=7, channel="dash")
    try:
        assert isinstance(state, RedisState)
        assert (state.ttl_s, state.channel) == (7, "dash")
    finally:
        state.close()
    with pytest.raises(ValueError, match="'sqlite'"):
        open_state("sqlite:///x.db", "n")
    with pytest.raises(ValueError, match="nonsense"):
        open_state("nonsense", "n")


# -- the cluster-wide cap ---------------------------------------------------------------------


def test_reserve_release_and_upgrade(make_state: StateFactory) -> None:
    state = make_state()
    assert state.reserve("free1", 0) and state.reserve("free2", -1), "limit <= 0: no cap"
    assert state.active_count() == 0, "an uncapped reserve holds nothing"

    assert state.reserve("r1", 2)
    assert state.reserve("r1", 2), "asking again for the same call is not a second slot"
    assert (state.active_count(), state.active_calls()) == (1, [])
    state.on_call_event(started("r1"))  # answered: the reservation becomes the call
    assert state.active_count() == 1
    assert [c.call_id for c in state.active_calls()] == ["r1"]

    assert state.reserve("r2", 2)
    assert not state.reserve("r3", 2), "the cap counts calls and reservations"
    state.release("r1")  # an answered call is not a reservation: left alone
    assert state.active_count() == 2
    state.release("r2")  # never answered
    assert state.reserve("r3", 2)

    state.on_call_event(rejected("r3"))  # e.g. its session could not start: CallEnded follows
    state.on_call_event(CallEnded("r3", T0, "FAILED", "500 Server Internal Error", "system"))
    assert state.active_count() == 1
    state.on_call_event(ended("r1"))
    assert state.active_count() == 0


def test_reservation_expiry_frees_a_slot(make_state: StateFactory) -> None:
    state = make_state(reservation_s=0.3)
    assert state.reserve("r1", 1)
    assert not state.reserve("r2", 1)
    time.sleep(0.4)  # the INVITE's outcome was never reported
    assert state.reserve("r2", 1)


def test_reservation_expiry_frees_a_slot_for_another_node(prefix: str) -> None:
    node_a = RedisState(REDIS_URL, "node-a", prefix=prefix, reservation_s=0.3)
    node_b = RedisState(REDIS_URL, "node-b", prefix=prefix, reservation_s=0.3)
    try:
        assert node_a.reserve("a1", 1)  # node-a dies before answering
        assert not node_b.reserve("b1", 1)
        time.sleep(0.4)
        assert node_b.reserve("b1", 1)
    finally:
        node_a.close()
        node_b.close()


def test_two_nodes_race_for_the_last_slots(prefix: str) -> None:
    limit, racers = 5, 16
    nodes = [RedisState(REDIS_URL, name, prefix=prefix) for name in ("node-a", "node-b")]
    try:
        for i in range(3):
            nodes[i % 2].call_started(started(f"live{i}"))
        barrier = threading.Barrier(racers)
        taken: dict[str, bool] = {}

        def race(i: int) -> None:
            barrier.wait()
            taken[f"new{i}"] = nodes[i % 2].reserve(f"new{i}", limit)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(taken) == racers
        winners = [call_id for call_id, ok in taken.items() if ok]
        assert len(winners) == limit - 3
        assert nodes[0].active_count() == nodes[1].active_count() == limit
        for call_id in winners:  # answered on the node that reserved them
            nodes[int(call_id.removeprefix("new")) % 2].call_started(started(call_id))
        assert nodes[0].active_count() == limit, "an answered reservation is one call, not two"
        assert not nodes[1].reserve("late", limit)
    finally:
        for node in nodes:
            node.close()


# -- events for dashboards --------------------------------------------------------------------


def test_call_events_are_published_in_order(prefix: str, redis_client: redis.Redis) -> None:
    channel = f"{prefix}:events"
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)  # the subscription is confirmed before anything is published
    state = RedisState(REDIS_URL, "node-a", prefix=prefix, channel=channel)
    try:
        state.start()
        for event in (started("c1"), turn("c1"), ended("c1")):
            state.on_call_event(event)
        received: list[dict] = []
        deadline = time.monotonic() + 5
        while len(received) < 3 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                received.append(json.loads(message["data"]))
        assert [m["type"] for m in received] == ["CallStarted", "TurnCompleted", "CallEnded"]
        assert {(m["node"], m["call_id"]) for m in received} == {("node-a", "c1")}
        assert received[0]["dialplan"] == "banking"
        assert (received[1]["transcript"], received[1]["fallbacks"]) == ("one", [])
        assert received[2]["disposition"] == "ANSWERED"
        wait_for(lambda: state.status()["published"] == 3, 2, "the published counter")
        assert state.status() == {
            "backend": "redis",
            "degraded": False,
            "published": 3,
            "dropped": 0,
        }
    finally:
        state.close()
        pubsub.close()


def test_a_full_event_queue_drops_and_counts(prefix: str) -> None:
    state = RedisState(REDIS_URL, "node-a", prefix=prefix, queue_size=2)
    try:
        start = time.monotonic()
        for i in range(5):  # nobody drains the queue yet
            state.on_call_event(StepEntered(f"c{i}", "menu", T0))
        assert time.monotonic() - start < 0.05
        assert state.status()["dropped"] == 3
        state.start()
        wait_for(lambda: state.status()["published"] == 2, 2, "the queued events")
    finally:
        state.close()


def test_memory_state_status() -> None:
    state = MemoryState("n")
    state.start()  # nothing to run in the background
    assert not state.degraded
    assert state.status() == {"backend": "memory", "degraded": False, "published": 0, "dropped": 0}
    state.close()


# -- outages ----------------------------------------------------------------------------------


def test_calls_that_ended_during_an_outage_vanish_at_once(prefix: str) -> None:
    """Redis kept its data but could not hear this node: when it can again, the cluster view
    converges at the node's next heartbeat instead of after `ttl_s`."""
    proxy = ToggleProxy((REDIS_HOST, REDIS_PORT))
    proxy.up()
    state = RedisState(f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}", "node-a", prefix=prefix)
    observer = RedisState(REDIS_URL, "observer", prefix=prefix)
    try:
        for call_id in ("c1", "c2", "c3"):
            state.call_started(started(call_id))
        assert observer.active_count() == 3
        proxy.down()
        state.call_ended("c1")
        state.call_started(started("c4", T0 + 4))
        assert state.degraded
        assert [c.call_id for c in observer.active_calls()] == ["c1", "c2", "c3"]  # stale
        proxy.up()
        state.heartbeat()
        assert not state.degraded
        assert [c.call_id for c in observer.active_calls()] == ["c2", "c3", "c4"]
    finally:
        state.close()
        observer.close()
        proxy.down()


def test_a_restarted_node_deletes_its_previous_runs_calls(prefix: str) -> None:
    before = RedisState(REDIS_URL, "node-a", prefix=prefix)
    observer = RedisState(REDIS_URL, "observer", prefix=prefix)
    try:
        before.call_started(started("old"))
        before.close()  # crashed: no CallEnded
        after = RedisState(REDIS_URL, "node-a", prefix=prefix)
        after.heartbeat()
        after.close()
        assert observer.active_count() == 0
    finally:
        observer.close()


@pytest.fixture
def redis_server(prefix: str, tmp_path: Path) -> Iterator[RedisServer]:
    """The real server, ALWAYS running again after the test, even when the test failed.
    Requests `prefix` so that the test's keys are deleted after Redis is back."""
    if REDIS_HOST not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"the outage drill stops and starts a local Redis; this one is {REDIS_HOST}")
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed to stop and restart the test Redis")
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.start()


def _timed(action: Callable[[], object], budget_s: float = 0.05) -> None:
    start = time.monotonic()
    action()
    elapsed = time.monotonic() - start
    assert elapsed < budget_s, f"took {elapsed * 1000:.0f} ms during the outage"


@pytest.mark.redis
def test_outage_drill_with_the_real_redis_server(prefix: str, redis_server: RedisServer) -> None:
    state = RedisState(REDIS_URL, "node-a", prefix=prefix)
    observer: RedisState | None = None
    try:
        state.start()
        for call_id in ("c1", "c2", "c3"):
            assert state.reserve(call_id, 10)
            state.on_call_event(started(call_id))
        assert state.active_count() == 3

        redis_server.stop()
        during: list[CallEvent] = [
            *(ended("c1"), started("c4", T0 + 4), StepEntered("c2", "pin", T0), turn("c2")),
            *(ended("c3"), started("c5", T0 + 5), ended("c5")),
        ]
        for event in during:
            _timed(lambda event=event: state.on_call_event(event))
        assert state.degraded
        assert state.status()["degraded"]
        # the cap falls back to this node's own calls: c2 and c4
        _timed(lambda: state.reserve("r1", 3))
        assert state.active_count() == 3
        assert not state.reserve("r2", 3)
        state.release("r1")
        assert state.reserve("r2", 3)
        state.release("r2")
        wait_for(
            lambda: state.status()["dropped"] >= len(during),
            5,
            "events to be dropped, not buffered, while Redis is down",
        )

        redis_server.start()
        state.heartbeat()
        assert not state.degraded
        observer = RedisState(REDIS_URL, "observer", prefix=prefix)
        calls = observer.active_calls()
        assert [(c.call_id, c.step) for c in calls] == [("c2", "pin"), ("c4", "")]
        assert observer.active_count() == 2
    finally:
        state.close()
        if observer is not None:
            observer.close()
