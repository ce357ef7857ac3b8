"""Live call state: which calls are active, on which node, at which step."""

from __future__ import annotations

from app.state.base import ActiveCall, LiveState
from app.state.memory import MemoryState

__all__ = ["ActiveCall", "LiveState", "MemoryState", "open_state"]


def open_state(url: str, node: str) -> LiveState:
    """`memory://` keeps state in this process; `redis://` or `rediss://` shares it by nodes."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryState(node)
    if scheme in ("redis", "rediss"):
        from app.state.redis import RedisState  # only deployments that use Redis import redis-py

        return RedisState(url, node)
    raise ValueError(
        f"unsupported live-state URL scheme {scheme or url!r}: use memory:// or redis://host:port/db"
    )
