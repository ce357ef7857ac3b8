"""Taking the caller's answer: speech through the endpointer and ASR, keys, or a recording.

Runs on the call's worker thread. It reads caller frames from the session's inbound queue and
keys from its `DtmfBuffer`, and returns as soon as one of them gives an answer, the no-input
timer runs out, or `stop` is set (hang-up, maximum call duration). Speech that barged into the
prompt arrives as `preface` frames and is heard first, so the answer keeps its first syllable.
The silence that ends the answer adapts to what has been heard so far (`Hangover`). A turn in
which the recogniser heard no word (noise the VAD took for speech) is no answer: listening goes
on, and the question ends in no input when the timer runs out with nothing said.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from app.asr.base import AsrEngine, AsrResult, AsrStream
from app.call.dtmf import DtmfBuffer, KeyCollector
from app.call.endpointing import (
    Endpointer,
    EndpointerConfig,
    FrameClassifier,
    SpeechEnded,
    SpeechStarted,
)
from app.call.hangover import Hangover
from app.dialog.actions import Ask, DtmfInput, DtmfOptions, Heard, Recording
from app.media.audio import CALL_RATE, FRAME_MS, SAMPLE_WIDTH
from app.media.resample import Resampler

MIN_PREPARE_SILENCE_MS = 100
"""No final pass starts before this much silence: shorter pauses are the gaps inside a word
or between digits read quickly, and each early final there would be decoded for nothing."""
_POLL_S = 0.02
_STRAY_S = 2.0
_SINGLE_KEY = DtmfOptions(max_digits=1, terminator=None, inter_digit_ms=1000)


@dataclass(slots=True)
class Answer:
    """What `collect` heard, with the timestamps the turn record needs (epoch seconds)."""

    heard: Heard
    speech_end_at: float | None = None
    asr_final_at: float | None = None
    end_silence_ms: int | None = None
    """The silence waited after the caller's last voiced frame before the answer ended (the
    adaptive endpointing chooses it per answer; a late partial can end a turn past it)."""


Frame = tuple[int, bytes]
"""A caller frame and the media tick it arrived at (for the echo reference)."""


class Listener:
    """The worker's view of the caller: frames in a queue, keys in a buffer."""

    def __init__(
        self,
        frames: queue.Queue[Frame],
        keys: DtmfBuffer,
        asr: AsrEngine,
        endpointer: EndpointerConfig,
        stop: threading.Event,
        hangover: Hangover | None = None,
        classifier: Callable[[], FrameClassifier] | None = None,
    ) -> None:
        self._frames = frames
        self._keys = keys
        self._asr = asr
        self._endpointer = endpointer
        self._stop = stop
        self._hangover = hangover
        self._classifier = classifier

    def new_classifier(self) -> FrameClassifier | None:
        """A fresh speech/non-speech classifier for one turn (None: the endpointer's default)."""
        return self._classifier() if self._classifier is not None else None

    def next_frame(self, timeout: float = _POLL_S) -> Frame | None:
        try:
            return self._frames.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain_frames(self) -> None:
        while True:
            try:
                self._frames.get_nowait()
            except queue.Empty:
                return

    def collect(self, ask: Ask, no_input_ms: int, preface: Iterable[bytes] = ()) -> Answer:
        """Speech or keys for `ask`; keys queued before (type-ahead) count at once.

        `preface`: caller frames heard before this call (speech that barged into the prompt),
        processed first. A question that takes no keys still reads a single key, so the
        dialogue can see the global agent key.
        """
        keys = KeyCollector(ask.dtmf or _SINGLE_KEY)
        config = self._endpointer
        if ask.end_silence_ms:
            config = dataclasses.replace(config, end_silence_ms=ask.end_silence_ms)
        turn = (
            _SpeechTurn(ask, self._asr, config, self.new_classifier(), self._hangover)
            if ask.speech
            else None
        )
        deadline = time.monotonic() + no_input_ms / 1000
        try:
            if turn is not None:
                for pcm in preface:
                    answer = turn.hear(pcm)
                    if answer is not None and not _wordless(answer):
                        return answer
            while not self._stop.is_set():
                done = self._read_keys(keys)
                if done is not None:
                    return Answer(done)
                frame = self.next_frame()
                if frame is not None and turn is not None:
                    answer = turn.hear(frame[1])
                    if answer is not None and not _wordless(answer):
                        return answer
                started = turn is not None and turn.started
                if not started and not keys.started and time.monotonic() > deadline:
                    return Answer(None)
            return Answer(None)
        finally:
            if turn is not None:
                turn.close()

    def _read_keys(self, keys: KeyCollector) -> DtmfInput | None:
        while self._keys.pending():
            key = self._keys.get(0)
            if key is not None and keys.add(key) is not None:
                terminator = keys.options.terminator
                if terminator is not None and not keys.done.terminated:
                    self._keys.swallow_next(terminator, _STRAY_S)
                return keys.done
        return keys.check_timeout()

    def record(self, path: Path, max_ms: int, silence_ms: int, no_input_ms: int) -> Recording:
        """Write the caller's audio to `path` until silence after speech, `max_ms`, a key or
        hang-up. Nothing is kept when the caller never spoke."""
        config = dataclasses.replace(
            self._endpointer, end_silence_ms=silence_ms, max_utterance_ms=max_ms + 1000
        )
        endpointer = Endpointer(config, sample_rate=CALL_RATE)
        path.parent.mkdir(parents=True, exist_ok=True)
        max_frames = max_ms // FRAME_MS
        deadline = time.monotonic() + no_input_ms / 1000
        spoke = False
        written = 0
        ended_by = "hangup"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(SAMPLE_WIDTH)
            out.setframerate(CALL_RATE)
            while not self._stop.is_set():
                if self._keys.pending():
                    self._keys.get(0)
                    ended_by = "dtmf"
                    break
                item = self.next_frame()
                if item is None:
                    if not spoke and time.monotonic() > deadline:
                        ended_by = "no_input"
                        break
                    continue
                frame = item[1]
                out.writeframes(frame)
                written += 1
                event = endpointer.process(frame)
                if isinstance(event, SpeechStarted):
                    spoke = True
                elif isinstance(event, SpeechEnded) and spoke:
                    ended_by = "silence"
                    break
                if written >= max_frames:
                    ended_by = "max_length"
                    break
                if not spoke and time.monotonic() > deadline:
                    ended_by = "no_input"
                    break
        if not spoke:
            with contextlib.suppress(OSError):
                path.unlink()
            return Recording("", 0, ended_by)
        return Recording(str(path), written * FRAME_MS, ended_by)


class _SpeechTurn:
    """One answer being heard: endpointer -> streaming ASR, end silence adapted to partials."""

    def __init__(
        self,
        ask: Ask,
        asr: AsrEngine,
        config: EndpointerConfig,
        classifier: FrameClassifier | None,
        hangover: Hangover | None,
    ) -> None:
        self._ask = ask
        self._asr = asr
        self._usual_ms = config.end_silence_ms
        self._hangover = hangover
        self._endpointer = Endpointer(config, sample_rate=CALL_RATE, classifier=classifier)
        self._resampler = (
            Resampler(CALL_RATE, asr.sample_rate) if asr.sample_rate != CALL_RATE else None
        )
        self._stream: AsrStream | None = None
        self._held: list[bytes] | None = None
        """Frames of the pause since `prepare_final()`; None while the final is not started."""
        self._prepared_seen = False

    @property
    def started(self) -> bool:
        return self._stream is not None

    def hear(self, frame: bytes) -> Answer | None:
        endpointer = self._endpointer
        event = endpointer.process(frame)
        if isinstance(event, SpeechStarted):
            self._stream = self._asr.open_stream(self._ask.options)
            if self._hangover is not None:  # before any words: e.g. no digit yet is incomplete
                silence = self._hangover.end_silence_ms(self._ask, "", self._usual_ms)
                endpointer.set_end_silence_ms(silence)
            self._partial(self._stream.feed(_to_asr(self._resampler, event.pre_roll)))
        elif self._stream is not None and endpointer.in_speech:
            self._in_speech(self._stream, frame)
        if isinstance(event, SpeechEnded) and self._stream is not None:
            trailing_ms = (endpointer.frame_count - event.speech_end_at_frame) * FRAME_MS
            speech_end_at = time.time() - trailing_ms / 1000
            stream, self._stream = self._stream, None
            self._held = None
            endpointer.set_end_silence_ms(self._usual_ms)  # for speech after a wordless turn
            result = stream.finish()
            # the silence actually waited: a late partial that made the answer complete can end
            # the turn at once, after more than the (shortened) end silence
            return Answer(result, speech_end_at, time.time(), trailing_ms)
        return None

    def _in_speech(self, stream: AsrStream, frame: bytes) -> None:
        """Feed a frame of the utterance; in a pause long enough, start the final pass early
        and hold the pause's frames back (the final needs none of them unless speech
        resumes, when they go in first and the utterance carries on)."""
        silence_ms = self._endpointer.silence_ms
        if self._held is not None:
            if silence_ms:
                self._held.append(frame)
                if not self._prepared_seen:  # a final that arrives during the pause
                    prepared = stream.prepared_result()
                    if prepared is not None:
                        self._prepared_seen = True
                        self._partial(prepared, shorten_only=True)
                return
            held, self._held = self._held, None
            for pcm in held:
                self._partial(stream.feed(_to_asr(self._resampler, pcm)))
        self._partial(stream.feed(_to_asr(self._resampler, frame)))
        # The final pass starts about its own duration before the silence runs out, so its
        # result is there when the turn ends (Whisper: ~0.5 s on two CPU threads).
        lead = stream.final_lead_ms
        start_at = max(MIN_PREPARE_SILENCE_MS, self._endpointer.end_silence_ms - lead, FRAME_MS)
        if silence_ms >= min(start_at, self._endpointer.end_silence_ms - FRAME_MS):
            self._held = []
            self._prepared_seen = False
            # A final ready at once may show the answer complete: then the turn ends sooner.
            # It never makes the turn wait longer: PocketSphinx's last word is still settling.
            self._partial(stream.prepare_final(), shorten_only=True)

    def _partial(self, result: AsrResult | None, shorten_only: bool = False) -> None:
        if result is not None and result.text.strip() and self._hangover is not None:
            silence = self._hangover.end_silence_ms(self._ask, result.text, self._usual_ms)
            if not shorten_only or silence < self._endpointer.end_silence_ms:
                self._endpointer.set_end_silence_ms(silence)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _wordless(answer: Answer) -> bool:
    """Speech the recogniser found no word in (a cough, a door, a noisy line): not an answer.
    The turn has reset itself; listening goes on until the no-input timer runs out."""
    heard = answer.heard
    return isinstance(heard, AsrResult) and not heard.text.strip()


def _to_asr(resampler: Resampler | None, pcm: bytes) -> bytes:
    return resampler.process(pcm) if resampler is not None else pcm


__all__ = ["Answer", "AsrResult", "Listener"]
