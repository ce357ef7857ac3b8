"""Audio of static prompts, rendered once and reused by every call.

A greeting or a menu is the same text on thousands of calls; synthesising it each time costs
CPU and, worse, the time before the caller hears anything. The cache keeps the prompt at the
call rate already encoded in the call's G.711 law (half the size of PCM, and what goes on the
wire: decoding and re-encoding G.711 is lossless), keyed by engine, voice, text and codec. It
is bounded in bytes and forgets the least recently used prompts first. Only prompts without
variables are offered to it, so no caller's data is ever kept here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from app.media.g711 import Codec


@dataclass(frozen=True, slots=True)
class PromptKey:
    engine: str
    voice: str
    text: str
    codec: str


class PromptCache:
    """Thread-safe LRU of encoded prompts; shared by all calls of a server."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[PromptKey, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get_pcm(self, key: PromptKey) -> bytes | None:
        """The prompt as 16-bit PCM at the call rate, or None if it is not cached."""
        with self._lock:
            encoded = self._entries.get(key)
            if encoded is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return Codec.from_name(key.codec).decode(encoded)

    def put_pcm(self, key: PromptKey, pcm: bytes) -> None:
        """Keep `pcm` (16-bit, call rate) for `key`; too large a prompt is not kept."""
        encoded = Codec.from_name(key.codec).encode(pcm)
        if len(encoded) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[key] = encoded
            self._bytes += len(encoded)
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
