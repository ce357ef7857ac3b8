"""Live call state: which calls are active, on which node, at which step."""

from __future__ import annotations

from app.state.base import ActiveCall, LiveState, StateStatus
from app.state.memory import MemoryState

__all__ = ["ActiveCall", "LiveState", "MemoryState", "StateStatus", "open_state"]


def open_state(
    url: str, node: str, *, ttl_s: int = 30, channel: str = "switchboard:events"
) -> LiveState:
    """`memory://` keeps state in this process; `redis://` or `rediss://` shares it by nodes.

    `ttl_s` (how long a dead node's calls still count) and `channel` (where call events are
    published for dashboards) only matter to Redis. Call `start()` on the result to run its
    background work, `close()` to stop it."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryState(node)
    if scheme in ("redis", "rediss"):
        from app.state.redis import RedisState  # only deployments that use Redis import redis-py

        return RedisState(url, node, ttl_s, channel=channel)
    raise ValueError(
        f"unsupported live-state URL scheme {scheme or url!r}: use memory:// or redis://host:port/db"
    )
