"""Endpointing: when did the caller start talking, and when are they done?

webrtcvad classifies each 20 ms frame as voiced or not; this module turns that flicker into two
turn-level events. Speech must last `min_speech_ms` before it counts, so clicks and line noise do
not open a turn, and a turn ends only after `end_silence_ms` of quiet, so the pauses between the
digits of an account number do not cut it short. The frames from just before the onset are kept
in a ring buffer and handed over with `SpeechStarted`, so the recogniser hears the first
syllable that the VAD needed time to confirm.

VADs keep calling frames speech for a while after the voice stops (webrtcvad's own hangover
adds 60-140 ms on FSDD digits; Silero smooths likewise), and every frame of that tail would
delay the end of turn. So, inside an utterance, a voiced frame extends it only if it is also
louder than the line's noise floor by `tail_margin_db` and within `SPEECH_RANGE_DB` of the
utterance's loudest frame: the floor is tracked on the frames the VAD calls silence, so the
gate follows a noisy line instead of cutting quiet talkers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Literal, Protocol

import webrtcvad

from app.media.audio import FRAME_MS, frame_bytes
from app.media.audioop_compat import audioop

VAD_RATES = (8000, 16000, 32000, 48000)
"""Sample rates webrtcvad accepts."""

ONSET_GAP_FRAMES = 2
"""Unvoiced frames tolerated inside an onset: webrtcvad drops single frames mid-word, and a
strict run would then miss a whole short digit such as "seven"."""


NOISE_FLOOR_START_DBFS = -70.0
"""Noise floor assumed before any silence has been heard (a quiet digital line)."""
NOISE_FLOOR_RISE = 0.05
"""Share of the way the floor moves up toward a louder silent frame (it drops at once): a
line that gets noisier is followed within a second or two of its pauses."""
SPEECH_FLOOR_DBFS = -60.0
"""Below this, a frame is not speech on a telephone line whatever the floor."""
SPEECH_RANGE_DB = 40.0
"""A frame this far below the utterance's loudest is its fading tail (the hiss of "six" ends
40-50 dB under its vowel), not more words: words of one utterance stay within ~30 dB."""
SILENT_DBFS = -96.0
"""Level given to an all-zero frame (16-bit full scale to one step)."""


def frame_dbfs(frame: bytes) -> float:
    """RMS level of 16-bit PCM in dB below full scale."""
    rms = audioop.rms(frame, 2)
    return 20 * math.log10(rms / 32768) if rms else SILENT_DBFS


class FrameClassifier(Protocol):
    """Says whether one 20 ms frame is speech (webrtcvad, Silero: see `app.vad`)."""

    def is_speech(self, frame: bytes) -> bool: ...


class _WebRtc:
    def __init__(self, aggressiveness: int, sample_rate: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._rate = sample_rate

    def is_speech(self, frame: bytes) -> bool:
        return self._vad.is_speech(frame, self._rate)


def webrtc_classifier(aggressiveness: int = 2, sample_rate: int = 8000) -> FrameClassifier:
    """webrtcvad as a `FrameClassifier` (the default; `app.vad` has the others)."""
    return _WebRtc(aggressiveness, sample_rate)


@dataclass(frozen=True)
class EndpointerConfig:
    """Endpointing knobs, in milliseconds; each is rounded up to whole 20 ms frames.

    `aggressiveness`: webrtcvad mode, 0 (keeps most as speech) to 3 (strictest about noise).
    `tail_margin_db`: inside an utterance, how far above the noise floor a voiced frame must be
    to count (see the module docstring); 0 takes the VAD's word as it is.
    """

    aggressiveness: int = 2
    min_speech_ms: int = 160
    end_silence_ms: int = 400
    max_utterance_ms: int = 15000
    pre_roll_ms: int = 300
    tail_margin_db: float = 8.0

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness!r}")
        for name in ("min_speech_ms", "end_silence_ms", "max_utterance_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive number of ms, got {value!r}")
        if not 0 <= self.tail_margin_db <= 40:
            raise ValueError(f"tail_margin_db must be 0 to 40 dB, got {self.tail_margin_db!r}")
        if not isinstance(self.pre_roll_ms, int) or self.pre_roll_ms < 0:
            raise ValueError(f"pre_roll_ms must be 0 or more ms, got {self.pre_roll_ms!r}")
        if self.max_utterance_ms < self.min_speech_ms:
            raise ValueError(
                f"max_utterance_ms ({self.max_utterance_ms}) must be at least "
                f"min_speech_ms ({self.min_speech_ms})"
            )


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech confirmed. `pre_roll`: PCM from `pre_roll_ms` before the onset to this frame."""

    pre_roll: bytes


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The utterance is over.

    `speech_end_at_frame`: frames processed (since construction or `reset()`) up to the end of
    the last voiced frame; times `FRAME_MS` gives milliseconds. For "max_length" it is the frame
    that hit the limit.
    """

    reason: Literal["silence", "max_length"]
    speech_end_at_frame: int


EndpointEvent = SpeechStarted | SpeechEnded


def _frames(ms: int) -> int:
    return math.ceil(ms / FRAME_MS)


class Endpointer:
    """Feeds one 20 ms frame at a time; one instance per call, used by the call's worker."""

    def __init__(
        self,
        config: EndpointerConfig | None = None,
        sample_rate: int = 8000,
        classifier: FrameClassifier | None = None,
    ) -> None:
        if sample_rate not in VAD_RATES:
            raise ValueError(
                f"sample_rate must be one of {VAD_RATES} for webrtcvad, got {sample_rate!r}"
            )
        self.config = config or EndpointerConfig()
        self.sample_rate = sample_rate
        self.frame_size = frame_bytes(sample_rate)
        self._vad = classifier or _WebRtc(self.config.aggressiveness, sample_rate)
        self._min_speech = _frames(self.config.min_speech_ms)
        self._end_silence = _frames(self.config.end_silence_ms)
        self._max_utterance = _frames(self.config.max_utterance_ms)
        self._pre_roll = _frames(self.config.pre_roll_ms)
        # Room for the pre-roll plus the longest onset span (voiced frames and tolerated gaps).
        longest_onset = self._min_speech + (self._min_speech - 1) * ONSET_GAP_FRAMES
        self._ring: deque[bytes] = deque(maxlen=self._pre_roll + longest_onset)
        self._noise_floor = NOISE_FLOOR_START_DBFS  # kept across turns: it is the line's
        self.reset()

    def reset(self) -> None:
        """Forget everything for the next turn; the frame counter restarts at 0."""
        self._end_silence = _frames(self.config.end_silence_ms)
        self._ring.clear()
        self._frame_count = 0
        self._in_speech = False
        self._run = 0
        self._gap = 0
        self._span = 0
        self._utterance = 0
        self._silence = 0
        self._last_voiced = 0
        self._peak = SILENT_DBFS  # the utterance's loudest frame so far

    def set_end_silence_ms(self, ms: int) -> None:
        """Change the silence that ends this turn, mid-turn (adaptive endpointing: longer while
        an answer is incomplete). Takes effect on the next frame."""
        if ms <= 0:
            raise ValueError(f"end silence must be a positive number of ms, got {ms!r}")
        self._end_silence = _frames(ms)

    @property
    def end_silence_ms(self) -> int:
        return self._end_silence * FRAME_MS

    @property
    def noise_floor_dbfs(self) -> float:
        """The line's noise floor as tracked on the frames the VAD called silence."""
        return self._noise_floor

    @property
    def silence_ms(self) -> int:
        """Silence so far after the last voiced frame of the utterance in progress (0 outside
        one)."""
        return self._silence * FRAME_MS if self._in_speech else 0

    @property
    def in_speech(self) -> bool:
        """True from `SpeechStarted` until `SpeechEnded`."""
        return self._in_speech

    @property
    def frame_count(self) -> int:
        """Frames processed since construction or `reset()`."""
        return self._frame_count

    def process(self, frame: bytes) -> EndpointEvent | None:
        """Classify one 20 ms frame; return an event when the turn state changes."""
        if len(frame) != self.frame_size:
            raise ValueError(
                f"expected one 20 ms frame of {self.frame_size} bytes at {self.sample_rate} Hz, "
                f"got {len(frame)} bytes"
            )
        voiced = self._vad.is_speech(frame)
        self._frame_count += 1
        if not voiced:
            self._track_floor(frame_dbfs(frame))
        if self._in_speech:
            return self._in_utterance(voiced and self._above_floor(frame))
        self._ring.append(frame)
        if not self._onset(voiced):
            return None
        self._in_speech = True
        self._utterance = self._span
        self._silence = 0
        self._last_voiced = self._frame_count
        self._peak = SILENT_DBFS
        keep = min(len(self._ring), self._pre_roll + self._span)
        pre_roll = b"".join(islice(self._ring, len(self._ring) - keep, None))
        self._ring.clear()
        return SpeechStarted(pre_roll)

    def _onset(self, voiced: bool) -> bool:
        """Track a candidate onset; True once it holds `min_speech_ms` of voiced frames."""
        if voiced:
            if not self._run:
                self._span = 0
            self._run += 1
            self._gap = 0
        elif self._run:
            self._gap += 1
            if self._gap > ONSET_GAP_FRAMES:
                self._run = 0
                return False
        else:
            return False
        self._span += 1
        return self._run >= self._min_speech

    def _track_floor(self, level: float) -> None:
        if level < self._noise_floor:
            self._noise_floor = level
        else:
            self._noise_floor += NOISE_FLOOR_RISE * (level - self._noise_floor)

    def _above_floor(self, frame: bytes) -> bool:
        margin = self.config.tail_margin_db
        if not margin:
            return True
        level = frame_dbfs(frame)
        if level > self._peak:
            self._peak = level
        return level > max(
            self._noise_floor + margin, SPEECH_FLOOR_DBFS, self._peak - SPEECH_RANGE_DB
        )

    def _in_utterance(self, voiced: bool) -> SpeechEnded | None:
        self._utterance += 1
        if voiced:
            self._silence = 0
            self._last_voiced = self._frame_count
        else:
            self._silence += 1
        if self._silence >= self._end_silence:
            return self._end("silence", self._last_voiced)
        if self._utterance >= self._max_utterance:
            return self._end("max_length", self._frame_count)
        return None

    def _end(self, reason: Literal["silence", "max_length"], at_frame: int) -> SpeechEnded:
        self._in_speech = False
        self._run = 0
        self._gap = 0
        return SpeechEnded(reason, at_frame)
