"""Live state shared by several nodes through Redis, with a local fallback when Redis is down.

Layout (prefix `switchboard`):
- `switchboard:call:<id>`, a hash per answered call (node, dialplan, step, started_at, from, to)
  with a TTL of `ttl_s`;
- `switchboard:calls`, the index: a sorted set of call ids scored by their expiry in Redis's own
  clock (so the nodes' clock skew does not matter). Answered calls expire after `ttl_s`,
  reservations (`reserve`, a call being answered) after `reservation_s`; the cluster-wide
  concurrent-call count is the number of live members;
- `switchboard:node:<node>`, the ids this node wrote, so that after an outage it can delete the
  calls that ended while Redis could not hear of it. Node names must be unique in a cluster.

A daemon thread (`start`) refreshes this node's calls every `ttl_s / 3` (`heartbeat`): a live
node's entries never expire, a dead node's stop counting after `ttl_s`. The same thread
publishes the call events it is handed, as JSON on `channel`, for dashboards.

This node's calls are always kept in a local `MemoryState` too: it answers while Redis is
unreachable (`degraded`, this node's calls only; the cap then applies per node) and is written
back to Redis when it returns. Writes of call state happen on the caller's thread with short
timeouts; after one failure Redis is not tried again for `retry_s` (or until the heartbeat).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app.call.events import CallEvent, CallStarted
from app.state import redis_scripts as lua
from app.state.base import ActiveCall, LiveState, StateStatus
from app.state.memory import DEFAULT_RESERVATION_S, MemoryState
from app.state.publisher import DEFAULT_QUEUE_SIZE, EventQueue, encode

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisState(LiveState):
    """Active calls of all nodes in Redis; never raises into the call when Redis fails."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        node: str,
        ttl_s: int = 30,
        *,
        prefix: str = "switchboard",
        channel: str = "switchboard:events",
        timeout_s: float = 0.5,
        retry_s: float = 5.0,
        reservation_s: float = DEFAULT_RESERVATION_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"Redis live-state ttl_s must be at least 1 s, got {ttl_s}")
        self.node = node
        self.ttl_s = ttl_s
        self._prefix = prefix
        self._index = f"{prefix}:calls"
        self._node_key = f"{prefix}:node:{node}"
        self.channel = channel
        self._retry_s = retry_s
        self._reservation_ms = round(reservation_s * 1000)
        # Short timeouts and no client-side retries: these calls run on call threads (and the
        # SIP loop for `reserve`); an outage costs one timeout per retry interval, after which
        # the local fallback answers at once.
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._url = _safe_url(url)
        self._upsert = self._client.register_script(lua.UPSERT)
        self._reserve = self._client.register_script(lua.RESERVE)
        self._release = self._client.register_script(lua.RELEASE)
        self._live_ids = self._client.register_script(lua.LIVE_IDS)
        self._live_count = self._client.register_script(lua.LIVE_COUNT)
        self._prune = self._client.register_script(lua.PRUNE)
        self._local = MemoryState(node, reservation_s=reservation_s)
        self._events = EventQueue(queue_size)
        self._lock = threading.Lock()
        self._degraded = False
        self._retry_at = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis(self._client.ping)  # one short try: a down Redis must not delay start-up

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and answers come from this node's own calls."""
        return self._degraded

    def status(self) -> StateStatus:
        published, dropped = self._events.counters()
        return {
            "backend": self.backend,
            "degraded": self._degraded,
            "published": published,
            "dropped": dropped,
        }

    # -- call events --------------------------------------------------------------------------

    def on_call_event(self, event: CallEvent) -> None:
        """Update the state, and queue the event for the dashboards' channel (never waits)."""
        self._events.offer(event)
        super().on_call_event(event)

    def call_started(self, event: CallStarted) -> None:
        self._local.call_started(event)
        self._push(event.call_id)

    def step_entered(self, call_id: str, step: str) -> None:
        self._local.step_entered(call_id, step)
        self._push(call_id)

    def call_ended(self, call_id: str) -> None:
        if self._local.forget(call_id):  # other ids (rejected INVITEs) were never in Redis
            self._redis(lambda: self._delete([call_id]))

    # -- the cluster-wide cap -----------------------------------------------------------------

    def reserve(self, call_id: str, limit: int) -> bool:
        """Take a cluster slot (see `LiveState.reserve`). While Redis is down only this node's
        calls are counted: during an outage each node enforces the cap on its own calls."""
        if limit <= 0:
            return True
        # Held locally before Redis has it, so a concurrent heartbeat never takes it for a call
        # that ended (see `_converge`).
        self._local.hold(call_id)
        taken = self._redis(lambda: self._take_slot(call_id, limit))
        if taken is None:
            self._local.unhold(call_id)
            return self._local.reserve(call_id, limit)
        if not taken:
            self._local.unhold(call_id)
        return taken

    def release(self, call_id: str) -> None:
        if self._local.unhold(call_id):
            self._redis(lambda: self._release(keys=self._keys(call_id), args=[call_id]))

    # -- queries ------------------------------------------------------------------------------

    def active_calls(self) -> list[ActiveCall]:
        """Answered calls of every node (this node's only while degraded)."""
        calls = self._redis(self._read_calls)
        return self._local.active_calls() if calls is None else calls

    def active_count(self) -> int:
        """Answered calls and reservations of every node, dead nodes' expired entries excluded."""
        count = self._redis(lambda: int(self._live_count(keys=[self._index])))
        return self._local.active_count() if count is None else count

    # -- background work ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat and publisher thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="live-state", daemon=True)
            self._thread.start()

    def heartbeat(self) -> None:
        """Refresh the TTL of this node's calls, drop expired index entries and delete this
        node's calls that ended unheard; also the moment a degraded state retries Redis."""
        with self._lock:
            self._retry_at = 0.0
        self._redis(self._sync_all)

    def close(self) -> None:
        """Stop the thread (it publishes what is queued first) and close the connections."""
        self._stopping.set()
        self._events.wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._client.close()

    def _run(self) -> None:
        beat_s = self.ttl_s / 3
        next_beat = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_beat:
                    self.heartbeat()
                    next_beat = time.monotonic() + beat_s
                wait_s = max(0.0, next_beat - time.monotonic())
                self._publish(self._events.take(wait_s))
            except Exception:  # a bug here must not silently end the heartbeat
                log.exception("live-state thread: unexpected error")
                self._stopping.wait(1.0)
        self._publish(self._events.take(0))

    def _publish(self, events: list[CallEvent]) -> None:
        """Send a batch in one round trip; while Redis is down it is dropped and counted."""
        if not events:
            return
        messages = [encode(event, self.node) for event in events]

        def send() -> bool:
            pipe = self._client.pipeline(transaction=False)
            for message in messages:
                pipe.publish(self.channel, message)
            pipe.execute()
            return True

        if self._redis(send):
            self._events.count_published(len(messages))
        else:
            self._events.count_dropped(len(messages))

    # -- internals ----------------------------------------------------------------------------

    def _key(self, call_id: str) -> str:
        return f"{self._prefix}:call:{call_id}"

    def _keys(self, call_id: str) -> list[str]:
        """The keys a call's scripts touch: its hash, the index, this node's set."""
        return [self._key(call_id), self._index, self._node_key]

    def _take_slot(self, call_id: str, limit: int) -> bool:
        args = [limit, self._reservation_ms, call_id, self.ttl_s * 1000]
        return bool(self._reserve(keys=[self._index, self._node_key], args=args))

    def _push(self, call_id: str) -> None:
        call = self._local.get(call_id)
        if call is None:
            return
        self._redis(lambda: self._write(call, self._client))
        if self._local.get(call_id) is None:  # it ended while we wrote: do not resurrect it
            self._redis(lambda: self._delete([call_id]))

    def _write(self, call: ActiveCall, client: Any) -> None:
        fields = {
            "node": call.node,
            "dialplan": call.dialplan,
            "step": call.step,
            "started_at": repr(call.started_at),
            "from": call.from_uri,
            "to": call.to_uri,
        }
        args: list[str | int] = [self.ttl_s * 1000, call.call_id]
        for name, value in fields.items():
            args += [name, value]
        self._upsert(keys=self._keys(call.call_id), args=args, client=client)

    def _delete(self, call_ids: Iterable[str]) -> None:
        ids = list(call_ids)
        if not ids:
            return
        pipe = self._client.pipeline()
        pipe.delete(*(self._key(call_id) for call_id in ids))
        pipe.zrem(self._index, *ids)
        pipe.srem(self._node_key, *ids)
        pipe.execute()

    def _sync_all(self) -> None:
        """Rewrite this node's answered calls, prune the index, and converge (see below)."""
        members = self._client.smembers(self._node_key)
        calls = self._local.active_calls()
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            self._write(call, pipe)
        self._prune(keys=[self._index], client=pipe)
        pipe.execute()
        self._converge(set(members) | {call.call_id for call in calls})

    def _converge(self, written: set[str]) -> None:
        """Delete the ids this node has in Redis but no longer has locally: calls that ended
        during an outage (or in an earlier run of this node) and calls that ended while this
        heartbeat wrote them. The local ids are read after Redis's: a call or reservation is
        held locally before Redis has it, so a live one can never look ended here."""
        self._delete(written - self._local.ids())

    def _read_calls(self) -> list[ActiveCall]:
        ids = self._live_ids(keys=[self._index])
        pipe = self._client.pipeline(transaction=False)
        for call_id in ids:
            pipe.hgetall(self._key(call_id))
        calls = []
        for call_id, fields in zip(ids, pipe.execute(), strict=True):
            if fields:  # a reservation, or the hash expired between the two reads
                calls.append(_active_call(call_id, fields))
        return sorted(calls, key=lambda c: (c.started_at, c.call_id))

    def _redis(self, op: Callable[[], T]) -> T | None:
        """Run `op` against Redis; None when Redis is down (or skipped until the next retry)."""
        with self._lock:
            if self._degraded and time.monotonic() < self._retry_at:
                return None
        try:
            result = op()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        if self._degraded:
            self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._degraded
            self._degraded = True
            self._retry_at = time.monotonic() + self._retry_s
        if first:
            log.warning(
                "Redis live state %s unreachable; counting this node's calls only until it is "
                "back: %s",
                self._url,
                exc,
            )

    def _recovered(self) -> None:
        """Redis is back: write this node's calls again (they expired, were lost with a
        restarted Redis, or never got there) and delete those that ended meanwhile."""
        try:
            self._sync_all()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        with self._lock:
            was_degraded, self._degraded = self._degraded, False
        if was_degraded:
            log.warning("Redis live state %s reachable again", self._url)


def _active_call(call_id: str, fields: dict[str, str]) -> ActiveCall:
    try:
        started_at = float(fields.get("started_at", "0"))
    except ValueError:
        started_at = 0.0
    return ActiveCall(
        call_id=call_id,
        node=fields.get("node", ""),
        dialplan=fields.get("dialplan", ""),
        step=fields.get("step", ""),
        started_at=started_at,
        from_uri=fields.get("from", ""),
        to_uri=fields.get("to", ""),
    )


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.rpartition("@")[2]
        return f"{scheme}{sep}***@{rest}"
    return url
