"""An ASR fallback chain: the first engine that can take a turn hears it; a failing one hands over.

`FallbackAsrEngine` is an `AsrEngine` over a chain such as whisper -> vosk -> pocketsphinx. A
turn's stream runs its engine on a thread of its own (`_Attempt`), so whatever the engine does,
the call's worker only queues audio and reads results and never waits on it longer than a
limit:

- an engine is skipped when its circuit is open or it already serves `max_streams` turns
  (`app.resilience.EngineGuard`);
- while the caller speaks, an engine that raises or falls more than `first_result_s` behind the
  audio (hung, or too slow under load) is dropped and the next engine gets the turn, with the
  turn's audio so far replayed to it;
- at the endpoint, an engine has `final_s` to give its final result, else the next one gets the
  whole utterance.

Every failure counts against the engine's circuit breaker; a success closes it. The final
result names the engine that answered (`AsrResult.engine`) and why earlier ones did not
(`AsrResult.notes`), which the call records on the turn. When no engine answers, the result is
empty (engine "none"): the dialogue treats it as not understood and the call goes on.

An engine that rejects a turn's options when opening the stream (a phrase outside a Vosk
model's vocabulary, a language it lacks) is skipped for that turn without counting as a failure.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence

from app.asr.base import AsrEngine, AsrError, AsrResult, AsrStream, RecognitionOptions
from app.media.audio import CALL_RATE
from app.media.resample import Resampler
from app.resilience import EngineGuard, short_error

log = logging.getLogger(__name__)

NO_ENGINE = "none"
PREPARE_WAIT_S = 0.15
"""How long `prepare_final` waits for a final that is ready at once (PocketSphinx: 25-50 ms).
The listener uses such a final to end a complete answer sooner; later it is only a head start."""


class FallbackAsrEngine(AsrEngine):
    """Engines in order of preference, each with its guard; fed the call's 8 kHz audio."""

    name = "fallback"
    sample_rate = CALL_RATE

    def __init__(self, chain: Sequence[tuple[AsrEngine, EngineGuard]]) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one engine")
        self.chain = tuple(chain)
        self.name = self.chain[0][1].name

    def open_stream(self, options: RecognitionOptions | None = None) -> FallbackAsrStream:
        return FallbackAsrStream(self, options)

    def check_options(self, options: RecognitionOptions) -> None:
        """AsrError when no engine of the chain could take a turn with `options`."""
        errors = []
        for engine, guard in self.chain:
            check = getattr(engine, "check_options", None)
            if check is None:
                return
            try:
                check(options)
                return
            except AsrError as exc:
                errors.append(f"{guard.name}: {exc}")
        raise AsrError("; ".join(errors))

    def close(self) -> None:
        for engine, _guard in self.chain:
            close = getattr(engine, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


class _Attempt:
    """One engine working on one turn, on its own daemon thread, fed through a queue.

    The slot taken by `EngineGuard.admit` is released when the thread ends, not when the chain
    gives up on it: an engine stuck in a call keeps that slot busy.
    """

    def __init__(self, engine: AsrEngine, guard: EngineGuard, options: RecognitionOptions | None):
        self.engine, self.guard = engine, guard
        self.error: BaseException | None = None
        self.rejected_options = False
        self.final: AsrResult | None = None
        self.prepared: AsrResult | None = None
        self.done = threading.Event()
        self.prepare_done = threading.Event()
        self._options = options
        self._ops: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._queued: collections.deque[tuple[float, float]] = collections.deque()
        """(monotonic time queued, seconds of audio) of each operation not yet done."""
        self._lock = threading.Lock()
        self._partial: AsrResult | None = None
        self.stream: AsrStream | None = None
        """The engine's stream once open (read across threads: `prepared_result` only)."""
        rate = engine.sample_rate
        self._resampler = Resampler(CALL_RATE, rate) if rate != CALL_RATE else None
        self._put("open")
        threading.Thread(target=self._run, name=f"asr-{guard.name}", daemon=True).start()

    def feed(self, pcm: bytes) -> None:
        self._put("feed", pcm)

    def prepare(self) -> None:
        self.prepare_done.clear()
        self._put("prepare")

    def finish(self) -> None:
        self._put("finish")

    def abandon(self) -> None:
        self._put("close")

    def lag_s(self) -> float:
        """How late the engine is with the oldest operation it has not finished, allowing it
        real time for the audio in it (a replay of the turn so far is one big feed)."""
        with self._lock:
            if not self._queued:
                return 0.0
            queued_at, audio_s = self._queued[0]
        return max(0.0, time.monotonic() - queued_at - audio_s)

    def backlog_s(self) -> float:
        """Seconds of audio queued that the engine has not taken yet."""
        with self._lock:
            return sum(audio_s for _at, audio_s in self._queued)

    def take_partial(self) -> AsrResult | None:
        with self._lock:
            partial, self._partial = self._partial, None
        return partial

    def _put(self, op: str, pcm: bytes = b"") -> None:
        with self._lock:
            self._queued.append((time.monotonic(), len(pcm) / (2 * CALL_RATE)))
        self._ops.put((op, pcm))

    def _done_one(self) -> None:
        with self._lock:
            self._queued.popleft()

    def _run(self) -> None:
        stream: AsrStream | None = None
        try:
            self._ops.get()
            try:
                stream = self.stream = self.engine.open_stream(self._options)
            except AsrError:
                self.rejected_options = True
                raise
            self._done_one()
            while True:
                op, pcm = self._ops.get()
                if op == "close":
                    return
                if op == "feed":
                    result = stream.feed(self._resampled(pcm))
                    if result is not None and result.text.strip():
                        with self._lock:
                            self._partial = result
                elif op == "prepare":
                    self.prepared = stream.prepare_final()
                    self.prepare_done.set()
                elif op == "finish":
                    if self._resampler is not None:
                        tail = self._resampler.flush()
                        if tail:
                            stream.feed(tail)
                    self.final, stream = stream.finish(), None
                    return
                self._done_one()
        except BaseException as exc:  # any engine failure is the chain's to handle, not a crash
            self.error = exc
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
            self.guard.release()
            self.done.set()
            self.prepare_done.set()

    def _resampled(self, pcm: bytes) -> bytes:
        return self._resampler.process(pcm) if self._resampler is not None else pcm


class FallbackAsrStream(AsrStream):
    """One turn: the audio so far (for a replay) and the engine working on it now."""

    def __init__(self, chain: FallbackAsrEngine, options: RecognitionOptions | None) -> None:
        self._chain = chain.chain
        self._options = options
        self._audio = bytearray()
        self._notes: list[str] = []
        self._next = 0
        self._attempt = self._start()

    @property
    def engine_name(self) -> str:
        """The engine hearing the turn now ("none" when every engine failed)."""
        return self._attempt.guard.name if self._attempt is not None else NO_ENGINE

    def feed(self, pcm: bytes) -> AsrResult | None:
        self._audio += pcm
        attempt = self._attempt
        if attempt is None:
            return None
        reason = self._trouble(attempt)
        if reason is not None:
            self._give_up(attempt, reason)
            attempt = self._attempt = self._start()  # replays self._audio, this frame included
            return None
        attempt.feed(pcm)
        return attempt.take_partial()

    def prepare_final(self) -> AsrResult | None:
        attempt = self._attempt
        if attempt is None or self._trouble(attempt) is not None:
            return None
        attempt.prepare()
        if attempt.prepare_done.wait(PREPARE_WAIT_S) and attempt.error is None:
            return attempt.prepared
        return None

    def prepared_result(self) -> AsrResult | None:
        attempt = self._attempt
        if attempt is None or attempt.stream is None or attempt.error is not None:
            return None
        return attempt.stream.prepared_result()

    @property
    def final_lead_ms(self) -> int:
        attempt = self._attempt
        stream = attempt.stream if attempt is not None else None
        return stream.final_lead_ms if stream is not None else super().final_lead_ms

    def finish(self) -> AsrResult:
        while self._attempt is not None:
            attempt = self._attempt
            reason = self._trouble(attempt)
            if reason is None:
                wait_s = attempt.guard.limits.final_s + attempt.backlog_s()
                attempt.finish()
                if attempt.done.wait(wait_s):
                    if attempt.error is None and attempt.final is not None:
                        attempt.guard.breaker.success()
                        return self._answer(attempt.final, attempt.guard.name)
                    reason = short_error(attempt.error) if attempt.error else "no final result"
                else:
                    reason = f"no final result within {wait_s * 1000:.0f} ms"
            self._give_up(attempt, reason)
            self._attempt = self._start()
        log.warning("no ASR engine could finish the turn: %s", "; ".join(self._notes))
        return AsrResult("", 0.0, is_final=True, engine=NO_ENGINE, notes=tuple(self._notes))

    def close(self) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.abandon()
            attempt.guard.breaker.no_verdict()

    def _answer(self, result: AsrResult, engine: str) -> AsrResult:
        return AsrResult(
            result.text, result.confidence, True, engine=engine, notes=tuple(self._notes)
        )

    def _start(self) -> _Attempt | None:
        """The next engine of the chain that admits the turn, fed the audio so far."""
        while self._next < len(self._chain):
            engine, guard = self._chain[self._next]
            self._next += 1
            reason = guard.admit()
            if reason is not None:
                self._notes.append(f"{guard.name}: skipped, {reason}")
                continue
            attempt = _Attempt(engine, guard, self._options)
            if self._audio:
                attempt.feed(bytes(self._audio))
            return attempt
        return None

    @staticmethod
    def _trouble(attempt: _Attempt) -> str | None:
        if attempt.error is not None:
            return short_error(attempt.error)
        lag = attempt.lag_s()
        if lag > attempt.guard.limits.first_result_s:
            return f"fell {lag * 1000:.0f} ms behind the audio (hung or overloaded)"
        return None

    def _give_up(self, attempt: _Attempt, reason: str) -> None:
        attempt.abandon()
        if attempt.rejected_options:
            self._notes.append(f"{attempt.guard.name}: skipped, cannot take this turn: {reason}")
            attempt.guard.breaker.no_verdict()
            return
        self._notes.append(f"{attempt.guard.name}: {reason}")
        retry_after = getattr(attempt.error, "retry_after_s", None)
        attempt.guard.breaker.failure(reason, retry_after)
        log.warning("ASR engine %s dropped from a turn: %s", attempt.guard.name, reason)
