"""Lua scripts of the Redis live state. Each runs atomically in Redis and reads Redis's own clock,
so the nodes' clock skew never decides whether an entry is live.

Keys: a hash per call, the index (sorted set of call ids scored by expiry in ms), and the node
set (ids this node wrote, so it can delete what ended while Redis could not hear it).
"""

from __future__ import annotations

_NOW_MS = (
    "local t = redis.call('TIME') "
    "local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
)

# KEYS: hash, index, node set. ARGV: ttl_ms, call id, then field, value pairs.
# The ZADD also upgrades the call's reservation (same member, later expiry).
UPSERT = (
    _NOW_MS + "local ttl_ms = tonumber(ARGV[1]) "
    "redis.call('HSET', KEYS[1], unpack(ARGV, 3)) "
    "redis.call('PEXPIRE', KEYS[1], ttl_ms) "
    "redis.call('ZADD', KEYS[2], now_ms + ttl_ms, ARGV[2]) "
    "redis.call('SADD', KEYS[3], ARGV[2]) "
    "redis.call('PEXPIRE', KEYS[3], ttl_ms) "
    "return 1"
)

# KEYS: index, node set. ARGV: limit, reservation_ms, call id, ttl_ms (of the node set).
# Prune, count, add: one step, so two nodes racing for the last slot cannot both get it.
RESERVE = (
    _NOW_MS + "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms) "
    "if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end "
    "if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end "
    "redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3]) "
    "redis.call('SADD', KEYS[2], ARGV[3]) "
    "redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4])) "
    "return 1"
)

# KEYS: hash, index, node set. ARGV: call id. A call that was answered keeps its entry.
RELEASE = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end "
    "redis.call('ZREM', KEYS[2], ARGV[1]) "
    "redis.call('SREM', KEYS[3], ARGV[1]) "
    "return 1"
)

LIVE_IDS = _NOW_MS + "return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf')"
LIVE_COUNT = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')"
PRUNE = _NOW_MS + "return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)"
