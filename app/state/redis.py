"""Live state shared by several nodes through Redis, with a local fallback when Redis is down.

Layout (prefix `switchboard`): a hash `switchboard:call:<id>` per active call (node, dialplan,
step, started_at, from, to) with a TTL, and a sorted set `switchboard:calls` of call ids scored by
their expiry time in Redis's own clock (so nodes' clock skew does not matter). A node refreshes
both for its calls in `heartbeat()`; when a node dies its calls stop counting after `ttl_s`.

This node's calls are always kept in a local `MemoryState` too: it answers while Redis is
unreachable (`degraded`, this node's calls only) and is written back to Redis when it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisError

from app.call.events import CallStarted
from app.state.base import ActiveCall, LiveState
from app.state.memory import MemoryState

log = logging.getLogger(__name__)

T = TypeVar("T")

_NOW_MS = (
    "local t = redis.call('TIME') "
    "local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
)
_UPSERT = (
    _NOW_MS + "local ttl_ms = tonumber(ARGV[1]) "
    "redis.call('HSET', KEYS[1], unpack(ARGV, 3)) "
    "redis.call('PEXPIRE', KEYS[1], ttl_ms) "
    "redis.call('ZADD', KEYS[2], now_ms + ttl_ms, ARGV[2]) "
    "return 1"
)
_LIVE_IDS = _NOW_MS + "return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf')"
_LIVE_COUNT = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')"
_PRUNE = _NOW_MS + "return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)"


class RedisState(LiveState):
    """Active calls of all nodes in Redis; never raises into the call when Redis fails."""

    def __init__(
        self,
        url: str,
        node: str,
        ttl_s: int = 30,
        *,
        prefix: str = "switchboard",
        timeout_s: float = 0.5,
        retry_s: float = 5.0,
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"Redis live-state ttl_s must be at least 1 s, got {ttl_s}")
        self.node = node
        self.ttl_s = ttl_s
        self._prefix = prefix
        self._index = f"{prefix}:calls"
        self._retry_s = retry_s
        # Short timeouts: these calls run on the call's thread; an outage costs one timeout per
        # retry interval, after which the local fallback answers at once.
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self._url = _safe_url(url)
        self._upsert = self._client.register_script(_UPSERT)
        self._live_ids = self._client.register_script(_LIVE_IDS)
        self._live_count = self._client.register_script(_LIVE_COUNT)
        self._prune = self._client.register_script(_PRUNE)
        self._local = MemoryState(node)
        self._lock = threading.Lock()
        self._degraded = False
        self._retry_at = 0.0
        self._redis(self._client.ping)

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and answers come from this node's own calls."""
        return self._degraded

    def call_started(self, event: CallStarted) -> None:
        self._local.call_started(event)
        self._push(event.call_id)

    def step_entered(self, call_id: str, step: str) -> None:
        self._local.step_entered(call_id, step)
        self._push(call_id)

    def call_ended(self, call_id: str) -> None:
        self._local.call_ended(call_id)

        def delete() -> None:
            pipe = self._client.pipeline()
            pipe.delete(self._key(call_id))
            pipe.zrem(self._index, call_id)
            pipe.execute()

        self._redis(delete)

    def active_calls(self) -> list[ActiveCall]:
        """Live calls of every node (this node's only while degraded)."""
        calls = self._redis(self._read_calls)
        return self._local.active_calls() if calls is None else calls

    def active_count(self) -> int:
        """Live calls of every node, expired entries of dead nodes excluded."""
        count = self._redis(lambda: int(self._live_count(keys=[self._index])))
        return self._local.active_count() if count is None else count

    def heartbeat(self) -> None:
        """Refresh the TTL of this node's calls and drop expired index entries; also the moment
        a degraded state retries Redis."""
        with self._lock:
            self._retry_at = 0.0
        self._redis(self._sync_all)

    def close(self) -> None:
        self._client.close()

    # -- internals ----------------------------------------------------------------------------

    def _key(self, call_id: str) -> str:
        return f"{self._prefix}:call:{call_id}"

    def _push(self, call_id: str) -> None:
        call = self._local.get(call_id)
        if call is not None:
            self._redis(lambda: self._write(call, self._client))

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
        self._upsert(keys=[self._key(call.call_id), self._index], args=args, client=client)

    def _sync_all(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        for call in self._local.active_calls():
            self._write(call, pipe)
        self._prune(keys=[self._index], client=pipe)
        pipe.execute()

    def _read_calls(self) -> list[ActiveCall]:
        ids = self._live_ids(keys=[self._index])
        pipe = self._client.pipeline(transaction=False)
        for call_id in ids:
            pipe.hgetall(self._key(call_id))
        calls = []
        for call_id, fields in zip(ids, pipe.execute(), strict=True):
            if fields:  # the hash expired between the two reads
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
        """Redis is back: write this node's calls again (they expired or never got there)."""
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
