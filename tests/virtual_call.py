"""A phone line without a phone network: drives a `CallSession` the way the SIP adapter does.

A media-clock thread calls `pull_frame()` and `push_frame()` every 20 ms (or faster, with
`speed`), records everything the bot says, and plays the caller's utterances, each one after the
bot has finished a prompt, the way a person answers a question. Used by the call-core tests and
the pipeline benchmark, so they exercise the real threads, queues and engines with no PJSIP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from app.call.events import CallEvent
from app.media.audio import CALL_RATE, FRAME_MS, frame_bytes, iter_frames

SILENCE = bytes(frame_bytes(CALL_RATE))


class Collector:
    """A call-event observer that keeps every event, for assertions."""

    def __init__(self) -> None:
        self.events: list[CallEvent] = []

    def on_call_event(self, event: CallEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class VirtualLine:
    """One simulated call leg. `hangup()` is what the session's `request_hangup` calls."""

    def __init__(
        self,
        utterances: Sequence[bytes],
        speed: float = 1.0,
        answer_after_silence_ms: int = 400,
        max_call_s: float = 60.0,
    ) -> None:
        self._utterances = [list(iter_frames([u], CALL_RATE)) for u in utterances]
        self._tick_s = FRAME_MS / 1000 / speed
        self._answer_after_frames = answer_after_silence_ms // FRAME_MS
        self._max_ticks = int(max_call_s * 1000 / FRAME_MS)
        self.heard = bytearray()  # everything the bot played, silence included, at 8 kHz
        self.bot_hung_up = threading.Event()
        self.utterances_played = 0
        self._session = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def hangup(self) -> None:
        """The session asks to end the call (the dialplan reached a hangup)."""
        self.bot_hung_up.set()
        self._stop.set()

    def run(self, session: object, caller_hangs_up_after_s: float | None = None) -> None:
        """Start `session`, clock media until the bot hangs up (or the caller does), wait for it."""
        self._session = session
        session.start()
        self._clock(caller_hangs_up_after_s)
        session.caller_hung_up()  # the far end is gone either way, as the SIP adapter reports
        if not session.join(timeout=30):
            raise AssertionError("call worker did not finish within 30 s after hangup")

    def _clock(self, caller_hangs_up_after_s: float | None) -> None:
        session = self._session
        next_tick = time.monotonic()
        bot_spoke = False
        silent_frames = 0
        speaking: list[bytes] = []
        hangup_tick = (
            int(caller_hangs_up_after_s * 1000 / FRAME_MS) if caller_hangs_up_after_s else None
        )
        for tick in range(self._max_ticks):
            if self._stop.is_set() or tick == hangup_tick:
                return
            out = session.pull_frame()
            self.heard += out if out is not None else SILENCE
            if out is not None:
                bot_spoke, silent_frames = True, 0
            else:
                silent_frames += 1
            if (
                not speaking
                and bot_spoke
                and silent_frames >= self._answer_after_frames
                and self.utterances_played < len(self._utterances)
            ):
                speaking = list(self._utterances[self.utterances_played])
                self.utterances_played += 1
                bot_spoke = False
            session.push_frame(speaking.pop(0) if speaking else SILENCE)
            next_tick += self._tick_s
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        raise AssertionError(f"call still running after {self._max_ticks * FRAME_MS / 1000:.0f} s")


class ScriptedLine:
    """A virtual line whose caller may talk over the bot and whose line may echo the bot.

    `utterances`: (barge_ms, pcm) in order. barge_ms None: the caller answers once the bot has
    been quiet `answer_after_silence_ms`; a number: the caller starts that many ms after the
    bot starts its next prompt, talking over it. `echo_db`/`echo_ms`: the line returns the
    bot's audio that much quieter and later, mixed into what the caller sends.
    Records per tick the level of the bot's audio (`bot_levels`) and the tick at which each
    utterance started (`started_ticks`).
    """

    def __init__(
        self,
        utterances: Sequence[tuple[int | None, bytes]],
        speed: float = 1.0,
        answer_after_silence_ms: int = 400,
        echo_db: float | None = None,
        echo_ms: int = 60,
        max_call_s: float = 60.0,
    ) -> None:
        self._script = [(barge, list(iter_frames([pcm], CALL_RATE))) for barge, pcm in utterances]
        self._tick_s = FRAME_MS / 1000 / speed
        self._answer_after = answer_after_silence_ms // FRAME_MS
        self._echo_gain = None if echo_db is None else 10 ** (echo_db / 20)
        self._echo_ticks = echo_ms // FRAME_MS
        self._max_ticks = int(max_call_s * 1000 / FRAME_MS)
        self.bot_levels: list[float] = []
        self.started_ticks: list[int] = []
        self.bot_hung_up = threading.Event()
        self._sent: list[bytes] = []

    def hangup(self) -> None:
        self.bot_hung_up.set()

    def run(self, session: object) -> None:
        session.start()
        try:
            self._clock(session)
        finally:
            session.caller_hung_up()
        if not session.join(timeout=30):
            raise AssertionError("call worker did not finish within 30 s after hangup")

    def _clock(self, session: object) -> None:
        from app.media.audioop_compat import audioop

        next_tick = time.monotonic()
        quiet = 0
        prompt_start: int | None = None
        speaking: list[bytes] = []
        for tick in range(self._max_ticks):
            if self.bot_hung_up.is_set():
                return
            out = session.pull_frame()
            self._sent.append(out if out is not None else SILENCE)
            level = audioop.rms(out, 2) if out is not None else 0.0
            self.bot_levels.append(level)
            if level > 0:
                if quiet >= self._answer_after or prompt_start is None:
                    prompt_start = tick
                quiet = 0
            else:
                quiet += 1
            if not speaking and self._script:
                barge, frames = self._script[0]
                due = (
                    quiet >= self._answer_after and prompt_start is not None
                    if barge is None
                    else prompt_start is not None
                    and quiet == 0
                    and tick - prompt_start >= barge // FRAME_MS
                )
                if due:
                    speaking = list(frames)
                    self._script.pop(0)
                    self.started_ticks.append(tick)
                    prompt_start = None
            frame = speaking.pop(0) if speaking else SILENCE
            if self._echo_gain is not None and tick >= self._echo_ticks:
                echo = audioop.mul(self._sent[tick - self._echo_ticks], 2, self._echo_gain)
                frame = audioop.add(frame, echo, 2)
            session.push_frame(frame)
            next_tick += self._tick_s
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        raise AssertionError(f"call still running after {self._max_ticks * FRAME_MS / 1000:.0f} s")

    def bot_stopped_after(self, tick: int, quiet_ms: int = 200) -> int | None:
        """The first tick at or after `tick` from which the bot stayed silent `quiet_ms`."""
        run = quiet_ms // FRAME_MS
        for t in range(tick, len(self.bot_levels) - run + 1):
            if not any(self.bot_levels[t : t + run]):
                return t
        return None
