"""A TTS fallback chain: the first engine that can speak a sentence speaks it.

`FallbackTtsEngine` is a `TtsEngine` over a chain such as piper -> espeak. Each `synthesize`
(the speaker calls it once per sentence) runs the chosen engine on a thread of its own and
reads its audio through a small queue, so a hung engine cannot hold the call: an engine that
raises, or gives no audio for `first_result_s` (before the first chunk or between chunks), is
dropped, counted against its circuit breaker, and the sentence is spoken again from its start
by the next engine. An engine whose circuit is open or that already serves `max_streams`
prompts is skipped (`app.resilience.EngineGuard`). When no engine can speak, `TtsError` says
why for each.

All audio comes out at the first engine's `sample_rate`; another engine's is resampled to it.
A voice given by the dialplan goes to the engines that have it (`TtsEngine.has_voice`); the
others speak in their own default voice. `last_render()` tells the speaker, on its own thread,
which engine spoke the last sentence and why earlier ones did not (for the turn's record, and
so that a fallback's audio is not kept in the prompt cache under the first engine's name).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from app.media.resample import Resampler
from app.resilience import EngineGuard, short_error
from app.tts.base import TtsEngine, TtsError

log = logging.getLogger(__name__)

_QUEUE_CHUNKS = 32
_PUT_POLL_S = 0.1
_END = object()


@dataclass(frozen=True, slots=True)
class Render:
    """Which engine spoke a sentence, and why the ones before it did not."""

    engine: str
    notes: tuple[str, ...] = ()


class FallbackTtsEngine(TtsEngine):
    """Engines in order of preference, each with its guard."""

    def __init__(self, chain: Sequence[tuple[TtsEngine, EngineGuard]]) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one engine")
        self.chain = tuple(chain)
        self.name = self.chain[0][1].name
        self.sample_rate = self.chain[0][0].sample_rate
        self._last = threading.local()

    def has_voice(self, voice: str) -> bool:
        return any(engine.has_voice(voice) for engine, _guard in self.chain)

    def last_render(self) -> Render | None:
        """Who speaks the sentence being synthesised on this thread, or spoke the last one
        (None: none yet, or no engine could)."""
        return getattr(self._last, "render", None)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        notes: list[str] = []
        self._last.render = None
        if not text.strip():
            return
        for engine, guard in self.chain:
            reason = guard.admit()
            if reason is not None:
                notes.append(f"{guard.name}: skipped, {reason}")
                continue
            given = voice if voice is not None and engine.has_voice(voice) else None
            attempt = _Attempt(engine, guard, text, given)
            rate = engine.sample_rate
            resampler = Resampler(rate, self.sample_rate) if rate != self.sample_rate else None
            try:
                for chunk in attempt.chunks():
                    pcm = resampler.process(chunk) if resampler else chunk
                    if pcm:
                        # who is speaking, known before the first audio goes out (provisional:
                        # a failure later in the sentence hands it on)
                        self._last.render = Render(guard.name, tuple(notes))
                        yield pcm
                if resampler is not None:
                    tail = resampler.flush()
                    if tail:
                        yield tail
            except _EngineFailed as failed:
                notes.append(f"{guard.name}: {failed.reason}")
                guard.breaker.failure(failed.reason, failed.retry_after_s)
                log.warning("TTS engine %s dropped from a sentence: %s", guard.name, failed.reason)
                continue
            except GeneratorExit:  # the prompt was stopped (barge-in, hang-up)
                attempt.cancel()
                guard.breaker.no_verdict()
                raise
            guard.breaker.success()
            self._last.render = Render(guard.name, tuple(notes))
            return
        raise TtsError("no TTS engine could speak: " + "; ".join(notes))

    def close(self) -> None:
        for engine, _guard in self.chain:
            close = getattr(engine, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


class _EngineFailed(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _Attempt:
    """One engine speaking one sentence on its own daemon thread; its slot is released when
    that thread ends."""

    def __init__(self, engine: TtsEngine, guard: EngineGuard, text: str, voice: str | None):
        self._engine, self._guard = engine, guard
        self._text, self._voice = text, voice
        self._queue: queue.Queue[object] = queue.Queue(_QUEUE_CHUNKS)
        self._cancelled = threading.Event()
        threading.Thread(target=self._run, name=f"tts-{guard.name}", daemon=True).start()

    def chunks(self) -> Iterator[bytes]:
        """The engine's chunks; `_EngineFailed` when it raises or stalls past its limit."""
        limit_s = self._guard.limits.first_result_s
        try:
            while True:
                try:
                    item = self._queue.get(timeout=limit_s)
                except queue.Empty:
                    raise _EngineFailed(f"no audio for {limit_s * 1000:.0f} ms") from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    retry_after = getattr(item, "retry_after_s", None)
                    raise _EngineFailed(short_error(item), retry_after)
                assert isinstance(item, bytes)
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._cancelled.set()

    def _run(self) -> None:
        chunks: Iterator[bytes] | None = None
        try:
            chunks = iter(self._engine.synthesize(self._text, self._voice))
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the reader, which falls back
            self._put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # stops the engine's work: an eSpeak process is killed
                with contextlib.suppress(Exception):
                    close()
            self._guard.release()

    def _put(self, item: object) -> bool:
        """Queue `item` unless the reader gave up (then False: stop synthesising)."""
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False
