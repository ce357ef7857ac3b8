"""One call's core: frames in, frames out, one worker thread. Free of PJSIP.

The media side (`push_frame`, `pull_frame`) is called from the telephony clock thread and never
blocks: incoming frames go to a bounded queue, outgoing frames come from the playout buffer.
The worker thread runs the dialogue: it speaks prompts (TTS -> resample -> playout), listens
(endpointer -> streaming ASR) and publishes turn events for the records.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.asr.base import AsrEngine, AsrResult, AsrStream, RecognitionOptions
from app.call.endpointing import Endpointer, EndpointerConfig, SpeechEnded, SpeechStarted
from app.call.events import EventBus, StepEntered, TurnCompleted
from app.dialog.actions import Ask, Hangup, Say
from app.dialog.dialplan import Dialplan
from app.dialog.runner import DialogRunner
from app.media.audio import CALL_RATE, FRAME_MS
from app.media.playout import PlayoutBuffer
from app.media.resample import Resampler
from app.tts.base import TtsEngine

log = logging.getLogger(__name__)

_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-call tuning; the defaults suit G.711 callers on a phone line."""

    endpointer: EndpointerConfig = field(default_factory=EndpointerConfig)
    no_input_ms: int = 6000
    inbound_queue_frames: int = 100  # 2 s of caller audio: the worker may lag, not block
    tts_voice: str | None = None


@dataclass(slots=True)
class _PendingTurn:
    index: int
    step: str
    prompt: str
    result: AsrResult | None
    grammar: str | None
    speech_end_at: float | None
    asr_final_at: float | None


class CallSession:
    """Runs a dialplan on one call. Thread-safe entry points: media side and `caller_hung_up`."""

    def __init__(
        self,
        call_id: str,
        dialplan: Dialplan,
        asr: AsrEngine,
        tts: TtsEngine,
        bus: EventBus,
        config: SessionConfig,
        request_hangup: Callable[[], None],
        variables: dict[str, str] | None = None,
    ) -> None:
        self.call_id = call_id
        self._dialplan = dialplan
        self._asr = asr
        self._tts = tts
        self._bus = bus
        self._config = config
        self._request_hangup = request_hangup
        self._variables = dict(variables or {})
        self._inbound: queue.Queue[bytes] = queue.Queue(maxsize=config.inbound_queue_frames)
        self._listening = False
        self._playout = PlayoutBuffer(rate=CALL_RATE)
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"call-{call_id[:12]}", daemon=True)
        self._turn_index = 0
        self._pending: _PendingTurn | None = None
        self.inbound_overruns = 0
        self.error: BaseException | None = None

    # ------------------------------------------------------------ media side: never blocks

    def push_frame(self, pcm: bytes) -> None:
        """One 20 ms frame of caller audio. Dropped unless the dialogue is listening."""
        if not self._listening:
            return
        try:
            self._inbound.put_nowait(pcm)
        except queue.Full:
            self.inbound_overruns += 1  # worker is behind: lose the oldest audio, keep up

    def pull_frame(self) -> bytes | None:
        """One 20 ms frame of bot audio, or None (silence)."""
        return self._playout.read()

    # ------------------------------------------------------------ control

    def start(self) -> None:
        self._thread.start()

    def caller_hung_up(self) -> None:
        """The far end is gone: stop speaking and listening at once."""
        self._ended.set()
        self._playout.close()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def variables(self) -> dict[str, str]:
        return dict(self._variables)

    # ------------------------------------------------------------ worker thread

    def _run(self) -> None:
        runner = DialogRunner(self._dialplan, self._variables)
        step = None
        try:
            actions = runner.run()
            action = next(actions)
            while not self._ended.is_set():
                if action.step != step:
                    step = action.step
                    self._bus.publish(StepEntered(self.call_id, step, time.time()))
                result: AsrResult | None = None
                if isinstance(action, Say):
                    self._speak(action.text)
                elif isinstance(action, Ask):
                    self._speak(action.prompt)
                    result = self._listen(action, step)
                elif isinstance(action, Hangup):
                    break
                if self._ended.is_set():
                    break
                action = actions.send(result)
        except StopIteration:
            pass
        except Exception as exc:  # a broken engine must end this call cleanly, not the server
            self.error = exc
            log.exception("call %s: dialogue failed in step %s", self.call_id, step)
        finally:
            self._variables.update(runner.variables)
            self._flush_pending_turn(first_audio_at=None)
            if not self._ended.is_set():
                self._request_hangup()
            self._playout.close()

    def _speak(self, text: str) -> None:
        """Synthesise `text` and play it to the end (or until the caller hangs up)."""
        if not text.strip():
            return
        self._playout.mark_prompt_start()
        resampler = Resampler(self._tts.sample_rate, CALL_RATE)
        first_audio_pending = self._pending is not None
        for chunk in self._tts.synthesize(text, self._config.tts_voice):
            if not self._playout.write(resampler.process(chunk), cancel=self._ended):
                return
            if first_audio_pending and self._playout.first_read_at is not None:
                self._flush_pending_turn(self._playout.first_read_at)
                first_audio_pending = False
        self._playout.write(resampler.flush(), cancel=self._ended)
        self._playout.end_of_prompt()
        while not self._playout.wait_drained(timeout=_POLL_S, cancel=self._ended):
            if self._ended.is_set():
                return
            if first_audio_pending and self._playout.first_read_at is not None:
                self._flush_pending_turn(self._playout.first_read_at)
                first_audio_pending = False
        if first_audio_pending:
            self._flush_pending_turn(self._playout.first_read_at)

    def _listen(self, ask: Ask, step: str) -> AsrResult | None:
        """Collect one utterance; None when the caller said nothing before the no-input timer."""
        endpointer = Endpointer(self._config.endpointer, sample_rate=CALL_RATE)
        no_input_ms = ask.no_input_ms or self._config.no_input_ms
        stream: AsrStream | None = None
        resampler = (
            Resampler(CALL_RATE, self._asr.sample_rate)
            if self._asr.sample_rate != CALL_RATE
            else None
        )
        self._drain_inbound()
        self._listening = True
        deadline = time.monotonic() + no_input_ms / 1000
        result: AsrResult | None = None
        speech_end_at: float | None = None
        try:
            while not self._ended.is_set():
                try:
                    frame = self._inbound.get(timeout=_POLL_S)
                except queue.Empty:
                    if stream is None and time.monotonic() > deadline:
                        break
                    continue
                event = endpointer.process(frame)
                if isinstance(event, SpeechStarted):
                    stream = self._asr.open_stream(ask.options)
                    stream.feed(resampler.process(event.pre_roll) if resampler else event.pre_roll)
                elif stream is not None and endpointer.in_speech:
                    stream.feed(resampler.process(frame) if resampler else frame)
                if isinstance(event, SpeechEnded) and stream is not None:
                    trailing_ms = (endpointer.frame_count - event.speech_end_at_frame) * FRAME_MS
                    speech_end_at = time.time() - trailing_ms / 1000
                    result = stream.finish()
                    stream = None
                    break
                if stream is None and time.monotonic() > deadline:
                    break
        finally:
            self._listening = False
            if stream is not None:
                stream.close()
        if self._ended.is_set():
            return None
        self._pending = _PendingTurn(
            index=self._turn_index,
            step=step,
            prompt=ask.prompt,
            result=result,
            grammar=_grammar_label(ask.options),
            speech_end_at=speech_end_at,
            asr_final_at=time.time() if result is not None else None,
        )
        self._turn_index += 1
        return result

    def _drain_inbound(self) -> None:
        while True:
            try:
                self._inbound.get_nowait()
            except queue.Empty:
                return

    def _flush_pending_turn(self, first_audio_at: float | None) -> None:
        turn, self._pending = self._pending, None
        if turn is None:
            return
        result = turn.result
        self._bus.publish(
            TurnCompleted(
                call_id=self.call_id,
                index=turn.index,
                step=turn.step,
                prompt=turn.prompt,
                transcript=result.text if result else "",
                confidence=result.confidence if result else 0.0,
                engine=result.engine if result else self._asr.name,
                grammar=turn.grammar,
                speech_end_at=turn.speech_end_at,
                asr_final_at=turn.asr_final_at,
                first_audio_at=first_audio_at,
            )
        )


def _grammar_label(options: RecognitionOptions) -> str | None:
    if options.grammar:
        return options.grammar
    if options.phrases:
        return "phrases:" + "|".join(options.phrases)
    return None
