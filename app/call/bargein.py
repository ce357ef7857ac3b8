"""Barge-in: is the caller talking over the bot, or is that the bot's own voice coming back?

A phone line returns part of what it is sent (hybrid echo, a speakerphone's acoustic echo),
typically 10 to 30 dB down and tens to hundreds of milliseconds late. A VAD hears that echo as
speech, so a bot that stops whenever the VAD fires interrupts itself. Here the outgoing audio
is the reference: the media thread notes the level of every frame it sends
(`EchoReference.played`, one `audioop.rms` per 20 ms). While a prompt plays, the detector
finds the line's echo delay (the lag at which the incoming level envelope best follows the
outgoing one) and its echo return loss (how much quieter the echo is, tracked from frames
that were not the caller), and predicts the echo level of each incoming frame. A frame only
counts as the caller when it is voiced and `echo_margin_db` louder than that prediction; on a
line without echo the prediction falls towards zero and the VAD alone decides. Speech must then
hold for `min_speech_ms`, so a click or a cough does not stop a prompt. The frames from before
the onset are kept, so the recogniser hears the whole answer.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass

from app.call.endpointing import ONSET_GAP_FRAMES, FrameClassifier
from app.media.audio import FRAME_MS
from app.media.audioop_compat import audioop

_RING = 64  # ticks of outgoing levels kept: 1.28 s, more than any echo path delay


@dataclass(frozen=True, slots=True)
class BargeInConfig:
    """`min_speech_ms`: speech that stops a prompt; `echo_margin_db`: how much louder than
    the predicted echo an incoming frame must be to count as the caller; `echo_window_ms`:
    the longest echo delay looked for; `pre_roll_ms`: audio kept from before the onset."""

    min_speech_ms: int = 80
    echo_margin_db: float = 6.0
    echo_guard: bool = True
    """False: every voiced frame counts (a line whose echo is cancelled upstream)."""
    echo_window_ms: int = 300
    pre_roll_ms: int = 300

    def __post_init__(self) -> None:
        if self.min_speech_ms < FRAME_MS:
            raise ValueError(f"min_speech_ms must be at least {FRAME_MS}, got {self.min_speech_ms}")
        if not 0 <= self.echo_margin_db <= 40:
            raise ValueError(f"echo_margin_db must be 0..40, got {self.echo_margin_db}")
        if not FRAME_MS <= self.echo_window_ms <= (_RING - 2) * FRAME_MS:
            raise ValueError(
                f"echo_window_ms must be {FRAME_MS}..{(_RING - 2) * FRAME_MS}, "
                f"got {self.echo_window_ms}"
            )
        if self.pre_roll_ms < 0:
            raise ValueError(f"pre_roll_ms must be 0 or more, got {self.pre_roll_ms}")


class EchoReference:
    """Levels of the frames sent to the caller, by media tick. One writer (the media clock),
    any number of readers; a reader racing the writer sees a level one tick old, harmlessly."""

    def __init__(self) -> None:
        self._levels = array("d", bytes(8 * _RING))
        self.tick = 0

    def played(self, frame: bytes | None) -> None:
        """The media clock sent `frame` (None: silence). Called once per 20 ms tick."""
        self._levels[self.tick % _RING] = audioop.rms(frame, 2) if frame else 0.0
        self.tick += 1

    def level_at(self, tick: int) -> float:
        """The level sent at `tick` (0 before the first)."""
        if tick < 0 or tick >= self.tick or tick <= self.tick - _RING:
            return 0.0
        return self._levels[tick % _RING]

    def loudest(self, tick: int, window: int) -> float:
        """The loudest level sent in the `window` ticks up to `tick`."""
        loudest = 0.0
        for t in range(max(0, tick - window), tick + 1):
            level = self._levels[t % _RING]
            if level > loudest:
                loudest = level
        return loudest


_INITIAL_ERL = 0.5
"""Echo assumed before the line is measured: 6 dB down, the least return loss G.168 allows."""
_ERL_FLOOR = 0.01
_ERL_RISE = 0.3  # share of the way up to a louder echo, per frame, once the echo delay is known
_ERL_RISE_UNCONFIRMED = 0.05  # the same before it is
_ESTIMATE_EVERY = 5  # frames between echo-delay estimates
_ESTIMATE_SPAN = 40  # frames (800 ms) of envelope compared per estimate
_MIN_REFERENCE = 200.0  # outgoing level below which a frame says nothing about the echo


class BargeInDetector:
    """Fed the caller's frames while a prompt plays; says when the caller has barged in."""

    def __init__(
        self, config: BargeInConfig, classifier: FrameClassifier, echo: EchoReference
    ) -> None:
        self.config = config
        self._classifier = classifier
        self._echo = echo
        self._margin = 10 ** (config.echo_margin_db / 20)
        self._max_lag = math.ceil(config.echo_window_ms / FRAME_MS)
        self._needed = math.ceil(config.min_speech_ms / FRAME_MS)
        pre_roll = math.ceil(config.pre_roll_ms / FRAME_MS)
        self._held: deque[bytes] = deque(maxlen=pre_roll + self._needed * (1 + ONSET_GAP_FRAMES))
        self._heard = array("d", bytes(8 * _RING))  # incoming levels by tick
        self._frames = 0
        self._lag: int | None = None
        self.erl = _INITIAL_ERL
        """Echo return loss as a level ratio (echo / sent), as measured so far."""
        self._run = 0
        self._gap = 0
        self.echo_frames = 0
        """Voiced frames discounted as echo (for the call's record)."""

    @property
    def lag_ms(self) -> int | None:
        """The echo delay found, if any."""
        return None if self._lag is None else self._lag * FRAME_MS

    def process(self, frame: bytes, tick: int) -> bool:
        """One caller frame received at media `tick`; True once the caller has barged in."""
        self._held.append(frame)
        level = audioop.rms(frame, 2)
        self._heard[tick % _RING] = level
        self._frames += 1
        if self._frames % _ESTIMATE_EVERY == 0 and self._frames >= _ESTIMATE_SPAN // 2:
            self._estimate_lag(tick)
        reference = self._reference(tick)
        voiced = self._classifier.is_speech(frame)
        guard = reference * self.erl * self._margin if self.config.echo_guard else 0.0
        if voiced and level > guard:
            self._run += 1
            self._gap = 0
            return self._run >= self._needed
        if voiced:
            self.echo_frames += 1
        if reference >= _MIN_REFERENCE and not self._run:  # not inside what may be an onset
            self._track_erl(level / reference)
        if self._run:
            self._gap += 1
            if self._gap > ONSET_GAP_FRAMES:
                self._run = 0
                self._gap = 0
        return False

    def held(self) -> list[bytes]:
        """The frames kept up to the barge-in: pre-roll and the onset, oldest first."""
        return list(self._held)

    def _reference(self, tick: int) -> float:
        """The sent level the echo of this frame would follow: at the measured delay (one
        frame either side for jitter), or the loudest over the whole window until measured."""
        if self._lag is None:
            return self._echo.loudest(tick, self._max_lag)
        return self._echo.loudest(tick - self._lag + 1, 2)

    def _track_erl(self, ratio: float) -> None:
        """Follow the echo's level ratio: up quickly, down slowly (it must cover the echo's
        loudest moments, and a soft start of the caller's speech must not drag it up much)."""
        if ratio > self.erl:
            # Until an echo path is found (the envelopes correlate), a louder frame is as likely
            # the caller starting to talk as echo: follow it slowly.
            rise = _ERL_RISE if self._lag is not None else _ERL_RISE_UNCONFIRMED
            self.erl += rise * (ratio - self.erl)
        else:
            self.erl = max(_ERL_FLOOR, self.erl * 0.95)

    def _estimate_lag(self, tick: int) -> None:
        """The lag at which the incoming envelope best matches the sent one (normalised
        cross-correlation of levels over the last `_ESTIMATE_SPAN` frames)."""
        span = min(_ESTIMATE_SPAN, self._frames)
        heard = [self._heard[(tick - i) % _RING] for i in range(span)]
        heard_energy = sum(h * h for h in heard)
        if heard_energy <= 0:
            return
        best, best_score = None, 0.5  # weaker matches than this are not an echo
        for lag in range(self._max_lag + 1):
            sent = [self._echo.level_at(tick - i - lag) for i in range(span)]
            sent_energy = sum(x * x for x in sent)
            if sent_energy <= 0:
                continue
            score = sum(h * x for h, x in zip(heard, sent, strict=True))
            score /= math.sqrt(heard_energy * sent_energy)
            if score > best_score:
                best, best_score = lag, score
        if best is not None:
            self._lag = best
