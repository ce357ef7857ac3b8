"""One call's core: frames and keys in, frames out, one worker thread. Free of PJSIP.

The media side (`push_frame`, `pull_frame`, `push_dtmf`) is called from telephony threads and
never blocks: incoming frames go to a bounded queue, keys to a small buffer, outgoing frames
come from the playout buffer (and their levels to the echo reference). The worker thread
drives the dialogue (`DialogRunner`) and performs its actions: speak (the `Speaker` thread
renders prompts while the worker listens for barge-in), listen (endpointer -> streaming ASR,
keys), call webhooks and chat models, transfer, record. It publishes call events for records,
with the timings of every turn: end of the caller's speech, final recognition, the dialogue's
decision, first reply audio ready, first reply audio sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.asr.base import AsrEngine, RecognitionOptions
from app.call.bargein import BargeInConfig, BargeInDetector, EchoReference
from app.call.dtmf import DtmfBuffer
from app.call.endpointing import EndpointerConfig, FrameClassifier, webrtc_classifier
from app.call.events import (
    DialogStarted,
    EventBus,
    StepEntered,
    StepResult,
    TurnCompleted,
    VariableSet,
)
from app.call.hangover import Hangover
from app.call.listening import Answer, Frame, Listener
from app.call.speaking import Prompt, Speaker
from app.dialog.actions import (
    Action,
    Ask,
    AskLlm,
    BargeIn,
    CallTimeLimit,
    CallWebhook,
    DtmfInput,
    Hangup,
    Heard,
    Record,
    Recording,
    Reply,
    Say,
    StepOutcome,
    Transfer,
    TransferOutcome,
)
from app.dialog.dialplan import Dialplan
from app.dialog.runner import REDACTED, DialogRunner
from app.media.audio import CALL_RATE
from app.media.playout import PlayoutBuffer
from app.ops.logs import bind_call_id
from app.services.llm import ChatClient, ChatReply
from app.services.webhook import WebhookClient, WebhookResponse
from app.tts.base import TtsEngine
from app.tts.cache import PromptCache

log = logging.getLogger(__name__)

_FRAME_S = 0.02
_TIME_LIMIT_GRACE_S = 60.0
"""After `on_max_duration` starts, how long its goodbye may take before the call is cut."""

TransferFunction = Callable[[str, str, float], TransferOutcome]
"""(target URI, fallback, timeout in seconds) -> outcome; blocks the calling worker."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-call tuning; the defaults suit G.711 callers on a phone line."""

    endpointer: EndpointerConfig = field(default_factory=EndpointerConfig)
    barge_in: BargeInConfig = field(default_factory=BargeInConfig)
    hangover: Hangover = field(default_factory=Hangover)
    classifier: Callable[[], FrameClassifier] | None = None
    """A new speech/non-speech classifier per turn (None: webrtcvad at the endpointer's
    aggressiveness). See `app.vad`."""
    no_input_ms: int = 6000
    inbound_queue_frames: int = 100  # 2 s of caller audio: the worker may lag, not block
    tts_voice: str | None = None
    recordings_dir: Path = Path("var/recordings")


@dataclass(slots=True)
class CallServices:
    """What a dialogue may reach outside the call. Shared by all calls of a server."""

    webhooks: WebhookClient | None = None
    chat: ChatClient | None = None
    transfer: TransferFunction | None = None
    prompt_cache: PromptCache | None = None


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
        services: CallServices | None = None,
    ) -> None:
        self.call_id = call_id
        self._dialplan = dialplan
        self._asr = asr
        self._tts = tts
        self._bus = bus
        self._config = config
        self._request_hangup = request_hangup
        self._services = services or CallServices()
        self._initial = {**(variables or {}), "call_id": call_id}
        self._inbound: queue.Queue[Frame] = queue.Queue(maxsize=config.inbound_queue_frames)
        self._listening = False
        self._playout = PlayoutBuffer(rate=CALL_RATE)
        self._echo = EchoReference()
        self._speaker: Speaker | None = None  # created by the worker
        self._held: list[bytes] | None = None
        """Speech that barged into a prompt, waiting for the question it answers."""
        self.codec = "PCMU"
        self.barge_ins = 0
        self._ended = threading.Event()  # the caller is gone
        self._stop = threading.Event()  # stop what is in progress: hang-up or time limit
        self._time_up = threading.Event()
        self._interruptible = False
        self._keys = DtmfBuffer(on_key=self._on_key)
        self._listener = Listener(
            self._inbound,
            self._keys,
            asr,
            config.endpointer,
            self._stop,
            hangover=config.hangover,
            classifier=config.classifier,
        )
        self._thread = threading.Thread(target=self._run, name=f"call-{call_id[:12]}", daemon=True)
        self._timer: threading.Timer | None = None
        self._turn_index = 0
        self._pending: TurnCompleted | None = None
        """The last turn, published once the reply's first audio is played (or never is)."""
        self._runner: DialogRunner | None = None
        self.transferred = False
        self.hangup_reason = ""
        self.inbound_overruns = 0
        self.error: BaseException | None = None

    # ------------------------------------------------------------ media side: never blocks

    def push_frame(self, pcm: bytes) -> None:
        """One 20 ms frame of caller audio. Dropped unless the dialogue is listening."""
        if not self._listening:
            return
        try:
            self._inbound.put_nowait((self._echo.tick, pcm))
        except queue.Full:
            self.inbound_overruns += 1  # worker is behind: lose the newest audio, keep up

    def pull_frame(self) -> bytes | None:
        """One 20 ms frame of bot audio, or None (silence)."""
        frame = self._playout.read()
        self._echo.played(frame)
        return frame

    def push_dtmf(self, key: str) -> None:
        """A key the caller pressed (RFC 4733 or SIP INFO)."""
        self._keys.push(key)

    def set_codec(self, name: str) -> None:
        """The call's G.711 law ("PCMU"/"PCMA"): cached prompts are kept encoded in it."""
        self.codec = name.upper()
        if self._speaker is not None:
            self._speaker.codec = self.codec

    def _on_key(self) -> None:
        if self._interruptible:
            self._playout.clear()  # the prompt stops; `_speak` sees the key and returns

    # ------------------------------------------------------------ control

    def start(self) -> None:
        limit = self._dialplan.handlers.max_duration_s
        if limit is not None:
            self._arm_timer(limit)
        self._thread.start()

    def caller_hung_up(self) -> None:
        """The far end is gone: stop speaking and listening at once."""
        self._ended.set()
        self._stop.set()
        self._playout.close()
        if self._timer is not None:
            self._timer.cancel()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def variables(self) -> dict[str, str]:
        """The call's variables as records may show them (sensitive values redacted)."""
        if self._runner is None:
            return dict(self._initial)
        return self._runner.redacted_variables()

    def _arm_timer(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._on_time_limit)
        self._timer.daemon = True
        self._timer.start()

    def _on_time_limit(self) -> None:
        bind_call_id(self.call_id)  # a timer thread: its lines belong to this call too
        log.info("call %s: maximum duration reached", self.call_id)
        self._time_up.set()
        self._stop.set()
        self._playout.clear()

    # ------------------------------------------------------------ worker thread

    def _run(self) -> None:
        bind_call_id(self.call_id)  # every line this worker (and its speaker) logs names the call
        runner = DialogRunner(
            self._dialplan,
            self._initial,
            today=dt.date.today(),
            on_variable=self._publish_variable,
            on_outcome=self._publish_outcome,
            on_step=lambda name: self._bus.publish(StepEntered(self.call_id, name, time.time())),
            on_answer=self._note_answer_result,
        )
        self._runner = runner
        self._bus.publish(
            DialogStarted(self.call_id, self._dialplan.name, self._dialplan.version, time.time())
        )
        step = None
        self._speaker = Speaker(
            self._tts,
            self._playout,
            voice=self._dialplan.voice or self._config.tts_voice,
            cache=self._services.prompt_cache,
            name=f"speak-{self.call_id[:11]}",
        )
        self._speaker.codec = self.codec
        try:
            actions = runner.run()
            action: Action = next(actions)
            while not self._ended.is_set():
                step = action.step
                if isinstance(action, Hangup):
                    self.hangup_reason = action.reason
                    break
                reply = self._perform(action)
                if self._ended.is_set():
                    # the runner still learns how this action went (a transfer that ended the
                    # call, a webhook answer), so its outcome reaches the call record
                    actions.send(reply)
                    break
                if self._time_up.is_set():
                    self._time_up.clear()
                    self._stop.clear()
                    self._arm_timer(_TIME_LIMIT_GRACE_S)
                    action = actions.throw(CallTimeLimit())
                else:
                    action = actions.send(reply)
                if self._pending is not None and self._pending.decided_at is None:
                    self._pending = dataclasses.replace(self._pending, decided_at=time.time())
        except StopIteration:
            pass
        except Exception as exc:  # a broken engine must end this call cleanly, not the server
            self.error = exc
            log.exception("call %s: dialogue failed in step %s", self.call_id, step)
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            self._publish_event(step or "", "error", ok=False, detail=detail)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._flush_pending_turn(first_audio_at=None)
            if not self._ended.is_set() and not self.transferred:
                self._request_hangup()
            self._playout.close()
            self._speaker.close()

    def _perform(self, action: Action) -> Reply:
        if not isinstance(action, Say | Ask) and self._held is not None:
            self._drop_held_speech()  # it answered nothing: the dialogue moved on
        if isinstance(action, Say):
            self._speak(action.text, action.barge_in, action.cacheable)
            return None
        if isinstance(action, Ask):
            return self._ask(action)
        if isinstance(action, CallWebhook):
            return self._call_webhook(action)
        if isinstance(action, AskLlm):
            return self._ask_llm(action)
        if isinstance(action, Transfer):
            return self._transfer(action)
        if isinstance(action, Record):
            return self._record(action)
        raise TypeError(f"no handler for {type(action).__name__}")

    # ------------------------------------------------------------ speaking

    def _speak(self, text: str, barge_in: BargeIn = "off", cacheable: bool = False) -> str:
        """Play `text` to the end, or until hang-up, the time limit, or what `barge_in` allows.

        Returns how it ended: "played", "skipped" (blank, or keys already typed ahead),
        "dtmf" (a key stopped it; the keys stay queued), "speech" (the caller barged in; their
        speech waits in `_held` for the question it answers) or "stopped" (hang-up, time limit).
        """
        if not text.strip() or self._stop.is_set():
            return "skipped"
        if barge_in != "off" and (self._keys.pending() or self._held is not None):
            return "skipped"  # the caller is already answering: go straight to the question
        speaker = self._speaker
        assert speaker is not None, "speaking before the worker started"
        prompt = speaker.say(text, cacheable)
        detector = None
        if barge_in == "speech":
            classifier = self._listener.new_classifier() or webrtc_classifier(
                self._config.endpointer.aggressiveness
            )
            detector = BargeInDetector(self._config.barge_in, classifier, self._echo)
            self._open_inbound(drain=True)
        self._interruptible = barge_in != "off"
        try:
            return self._play(prompt, detector)
        finally:
            self._interruptible = False
            if self._held is None:
                self._listening = False

    def _play(self, prompt: Prompt, detector: BargeInDetector | None) -> str:
        speaker = self._speaker
        assert speaker is not None
        while True:
            if self._stop.is_set() or self._playout.closed:
                speaker.stop(prompt)
                return "stopped"
            if self._interruptible and self._keys.pending():
                speaker.stop(prompt)
                return "dtmf"
            if prompt.error is not None:
                raise prompt.error
            if speaker.played(prompt):
                self._flush_pending_turn(self._playout.first_read_at, prompt)
                return "played"
            self._publish_turn_once_heard(prompt)
            if detector is None:
                if prompt.rendered.is_set():
                    self._playout.wait_drained(timeout=_FRAME_S, cancel=self._stop)
                else:
                    prompt.rendered.wait(_FRAME_S)
                continue
            frame = self._listener.next_frame(_FRAME_S)
            if frame is not None and detector.process(frame[1], frame[0]):
                dropped = speaker.stop(prompt)
                self._held = detector.held()
                self.barge_ins += 1
                self._publish_turn_once_heard(prompt)
                log.info(
                    "call %s: caller barged in (%d ms of the prompt left unplayed)",
                    self.call_id,
                    dropped * 20,
                )
                return "speech"

    def _publish_turn_once_heard(self, prompt: Prompt) -> None:
        """The pending turn's reply has started playing: its latency is known now."""
        if self._pending is not None and self._playout.first_read_at is not None:
            self._flush_pending_turn(self._playout.first_read_at, prompt)

    def _open_inbound(self, drain: bool) -> None:
        """Let caller frames into the inbound queue (older audio dropped when `drain`)."""
        if drain:
            self._listener.drain_frames()
        self._listening = True

    def _drop_held_speech(self) -> None:
        self._held = None
        self._listening = False

    @contextlib.contextmanager
    def _hearing_the_caller(self, drain: bool = True) -> Iterator[None]:
        """Caller frames reach the inbound queue while the block listens or records."""
        self._open_inbound(drain)
        try:
            yield
        finally:
            self._listening = False

    # ------------------------------------------------------------ listening

    def _ask(self, ask: Ask) -> Heard:
        barge_in: BargeIn = ask.barge_in
        if barge_in == "speech" and not ask.speech:
            barge_in = "dtmf"  # a keys-only question: speech cannot answer it
        ended = self._speak(ask.prompt, barge_in, ask.cacheable)
        if ended == "stopped":
            return None
        held, self._held = self._held, None
        if held is not None and not ask.speech:
            held = None
        with self._hearing_the_caller(drain=held is None):
            answer = self._listener.collect(
                ask, ask.no_input_ms or self._config.no_input_ms, preface=held or ()
            )
        if self._ended.is_set():
            return None
        self._note_turn(ask, answer, barged_in=held is not None)
        return answer.heard

    def _note_turn(self, ask: Ask, answer: Answer, barged_in: bool = False) -> None:
        heard = answer.heard
        if isinstance(heard, DtmfInput):
            transcript, confidence, engine, grammar = heard.digits, 1.0, "dtmf", "dtmf"
            fallbacks: tuple[str, ...] = ()
            keys = REDACTED if ask.sensitive else heard.digits
            self._publish_event(ask.step, "dtmf", ok=True, detail=keys)
        elif heard is not None:
            transcript, confidence, engine = heard.text, heard.confidence, heard.engine
            grammar = _grammar_label(ask.options)
            fallbacks = tuple(f"asr {note}" for note in heard.notes)
        else:
            transcript, confidence, engine, grammar = "", 0.0, self._asr.name, None
            fallbacks = ()
        if ask.sensitive and transcript:
            transcript = REDACTED
        self._flush_pending_turn(first_audio_at=None)
        self._pending = TurnCompleted(
            call_id=self.call_id,
            index=self._turn_index,
            step=ask.step,
            prompt=ask.prompt,
            transcript=transcript,
            confidence=confidence,
            engine=engine,
            grammar=grammar,
            speech_end_at=answer.speech_end_at,
            asr_final_at=answer.asr_final_at or (time.time() if heard is not None else None),
            first_audio_at=None,
            barge_in=barged_in,
            end_silence_ms=answer.end_silence_ms,
            fallbacks=fallbacks,
        )
        self._turn_index += 1

    def _record(self, record: Record) -> Recording:
        self._speak(record.prompt, "off")
        if self._stop.is_set():
            return Recording("", 0, "hangup")
        self._keys.clear()
        path = self._config.recordings_dir / recording_folder(self.call_id) / record.path
        with self._hearing_the_caller():
            return self._listener.record(path, record.max_ms, record.silence_ms, record.no_input_ms)

    # ------------------------------------------------------------ the outside world

    def _call_webhook(self, action: CallWebhook) -> WebhookResponse:
        client = self._services.webhooks
        if client is None:
            return WebhookResponse(ok=False, status=None, error="webhooks are not enabled")
        return client.call(action.request, cancel=self._stop)

    def _ask_llm(self, action: AskLlm) -> ChatReply:
        client = self._services.chat
        if client is None:
            return ChatReply(ok=False, error="LLM steps are not enabled")
        return client.complete(action.request, cancel=self._stop)

    def _transfer(self, action: Transfer) -> TransferOutcome:
        self._speak(action.prompt, "off")
        if self._stop.is_set():
            return TransferOutcome(ok=False, error="caller hung up")
        transfer = self._services.transfer
        if transfer is None:
            return TransferOutcome(ok=False, error="transfer is not available on this call")
        outcome = transfer(action.target, action.fallback, action.timeout_s)
        self.transferred = outcome.ok
        return outcome

    # ------------------------------------------------------------ records

    def _publish_variable(self, step: str, name: str, value: str) -> None:
        self._bus.publish(VariableSet(self.call_id, step, name, value, time.time()))

    def _publish_outcome(self, outcome: StepOutcome) -> None:
        self._publish_event(outcome.step, outcome.kind, outcome.ok, outcome.detail)

    def _publish_event(self, step: str, kind: str, ok: bool, detail: str) -> None:
        self._bus.publish(StepResult(self.call_id, step, kind, ok, detail, time.time()))

    def _note_answer_result(self, result: str) -> None:
        """The dialogue judged the answer of the pending turn (runs on this worker)."""
        if self._pending is not None and self._pending.result is None:
            self._pending = dataclasses.replace(self._pending, result=result)

    def _flush_pending_turn(
        self, first_audio_at: float | None, reply: Prompt | None = None
    ) -> None:
        """Publish the pending turn, with what is known of the `reply` prompt that followed."""
        turn, self._pending = self._pending, None
        if turn is None:
            return
        if reply is not None:
            turn = dataclasses.replace(
                turn,
                tts_ready_at=reply.tts_ready_at,
                tts_engine=reply.engine,
                fallbacks=(*turn.fallbacks, *(f"tts {note}" for note in reply.fallback_notes)),
            )
        self._bus.publish(dataclasses.replace(turn, first_audio_at=first_audio_at))
        for note in turn.fallbacks:
            self._publish_event(turn.step, "fallback", ok=False, detail=note)


def _grammar_label(options: RecognitionOptions) -> str | None:
    if options.grammar:
        return options.grammar
    if options.jsgf:
        return "jsgf"
    if options.phrases:
        return "phrases:" + "|".join(options.phrases)
    return None


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def recording_folder(call_id: str) -> str:
    """A SIP Call-ID as a folder name: no slashes, no dot-dot, bounded length."""
    return _UNSAFE.sub("_", call_id).strip("._")[:120] or "call"
