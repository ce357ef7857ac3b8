"""The audio port between PJSIP's conference bridge and one call's core.

PJSIP calls these two methods from its media clock thread every 20 ms. They must never block,
log or raise: a Python exception escaping a SWIG director callback aborts the process. So each
one does a fixed amount of work (copy one frame, hand it over) and swallows surprises into a
counter that the call reports when it ends.
"""

from __future__ import annotations

from typing import Protocol

import pjsua2 as pj

from app.media.audio import CALL_RATE, FRAME_MS, SAMPLE_WIDTH, frame_bytes
from app.sip.bytevector import byte_vector_to_bytes


class FrameSink(Protocol):
    """The call core's side of the media path (implemented by `CallSession`)."""

    def push_frame(self, pcm: bytes) -> None:
        """Take one 20 ms frame of caller audio without blocking."""

    def pull_frame(self) -> bytes | None:
        """Give one 20 ms frame of bot audio, or None for silence, without blocking."""


def pcm_port_format(rate: int = CALL_RATE) -> pj.MediaFormatAudio:
    """16-bit mono PCM at `rate` in 20 ms frames: what the call core speaks."""
    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = rate
    fmt.channelCount = 1
    fmt.bitsPerSample = SAMPLE_WIDTH * 8
    fmt.frameTimeUsec = FRAME_MS * 1000
    return fmt


class CallAudioPort(pj.AudioMediaPort):
    """Moves frames between the bridge and a `FrameSink`; counts what it had to drop."""

    def __init__(self, sink: FrameSink, rate: int = CALL_RATE) -> None:
        super().__init__()
        self._sink = sink
        self._frame_size = frame_bytes(rate)
        self._silence = pj.ByteVector(bytes(self._frame_size))
        self.frames_in = 0
        self.frames_out = 0
        self.bad_frames = 0
        self.callback_errors = 0

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        try:
            if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
                return
            pcm = byte_vector_to_bytes(frame.buf)
            if len(pcm) != self._frame_size:
                self.bad_frames += 1
                return
            self.frames_in += 1
            self._sink.push_frame(pcm)
        except Exception:
            self.callback_errors += 1

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        try:
            pcm = self._sink.pull_frame()
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            if pcm is None:
                frame.buf = self._silence
            else:
                frame.buf = pj.ByteVector(pcm)
                self.frames_out += 1
            frame.size = self._frame_size
        except Exception:
            self.callback_errors += 1
