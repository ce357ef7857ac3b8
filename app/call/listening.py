"""Taking the caller's answer: speech through the endpointer and ASR, keys, or a recording.

Runs on the call's worker thread. It reads caller frames from the session's inbound queue and
keys from its `DtmfBuffer`, and returns as soon as one of them gives an answer, the no-input
timer runs out, or `stop` is set (hang-up, maximum call duration).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path

from app.asr.base import AsrEngine, AsrResult, AsrStream
from app.call.dtmf import DtmfBuffer, KeyCollector
from app.call.endpointing import Endpointer, EndpointerConfig, SpeechEnded, SpeechStarted
from app.dialog.actions import Ask, DtmfInput, DtmfOptions, Heard, Recording
from app.media.audio import CALL_RATE, FRAME_MS, SAMPLE_WIDTH
from app.media.resample import Resampler

_POLL_S = 0.02
_STRAY_S = 2.0
_SINGLE_KEY = DtmfOptions(max_digits=1, terminator=None, inter_digit_ms=1000)


@dataclass(slots=True)
class Answer:
    """What `collect` heard, with the timestamps the turn record needs (epoch seconds)."""

    heard: Heard
    speech_end_at: float | None = None
    asr_final_at: float | None = None


class Listener:
    """The worker's view of the caller: frames in a queue, keys in a buffer."""

    def __init__(
        self,
        frames: queue.Queue[bytes],
        keys: DtmfBuffer,
        asr: AsrEngine,
        endpointer: EndpointerConfig,
        stop: threading.Event,
    ) -> None:
        self._frames = frames
        self._keys = keys
        self._asr = asr
        self._endpointer = endpointer
        self._stop = stop

    def drain_frames(self) -> None:
        while True:
            try:
                self._frames.get_nowait()
            except queue.Empty:
                return

    def collect(self, ask: Ask, no_input_ms: int) -> Answer:
        """Speech or keys for `ask`; keys queued before (type-ahead) count at once.

        A question that takes no keys still reads a single key, so the dialogue can see the
        global agent key.
        """
        keys = KeyCollector(ask.dtmf or _SINGLE_KEY)
        config = self._endpointer
        if ask.end_silence_ms:
            config = dataclasses.replace(config, end_silence_ms=ask.end_silence_ms)
        endpointer = Endpointer(config, sample_rate=CALL_RATE) if ask.speech else None
        resampler = (
            Resampler(CALL_RATE, self._asr.sample_rate)
            if ask.speech and self._asr.sample_rate != CALL_RATE
            else None
        )
        stream: AsrStream | None = None
        deadline = time.monotonic() + no_input_ms / 1000
        try:
            while not self._stop.is_set():
                done = self._read_keys(keys)
                if done is not None:
                    return Answer(done)
                try:
                    frame = self._frames.get(timeout=_POLL_S)
                except queue.Empty:
                    frame = None
                if frame is not None and endpointer is not None:
                    event = endpointer.process(frame)
                    if isinstance(event, SpeechStarted):
                        stream = self._asr.open_stream(ask.options)
                        stream.feed(_to_asr(resampler, event.pre_roll))
                    elif stream is not None and endpointer.in_speech:
                        stream.feed(_to_asr(resampler, frame))
                    if isinstance(event, SpeechEnded) and stream is not None:
                        trailing_ms = (
                            endpointer.frame_count - event.speech_end_at_frame
                        ) * FRAME_MS
                        speech_end_at = time.time() - trailing_ms / 1000
                        result = stream.finish()
                        stream = None
                        return Answer(result, speech_end_at, time.time())
                if stream is None and not keys.started and time.monotonic() > deadline:
                    return Answer(None)
            return Answer(None)
        finally:
            if stream is not None:
                stream.close()

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
                try:
                    frame = self._frames.get(timeout=_POLL_S)
                except queue.Empty:
                    if not spoke and time.monotonic() > deadline:
                        ended_by = "no_input"
                        break
                    continue
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


def _to_asr(resampler: Resampler | None, pcm: bytes) -> bytes:
    return resampler.process(pcm) if resampler is not None else pcm


__all__ = ["Answer", "AsrResult", "Listener"]
