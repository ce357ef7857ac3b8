"""The audio ports between PJSIP's conference bridge and the calls' cores.

PJSIP calls `onFrameReceived`/`onFrameRequested` from its media clock thread every 20 ms. They
must never block, log or raise: a Python exception escaping a SWIG director callback aborts the
process. So each one does a fixed amount of work (copy one frame, hand it over) and swallows
surprises into a counter that the agent reports when the call ends.

Ports are pooled and reused, never destroyed. PJSIP 2.15's bridge removes a port
asynchronously (on its next clock tick), but pjsua2's `AudioMediaPort` destructor frees the
port at once (fixed upstream after 2.15.1, pjproject#4200): dropping a port at the end of a
call let the clock thread call into a half-destroyed object and crashed the server. A released
port is simply given an idle sink and waits for the next call; see `PortPool.close` for
shutdown.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Protocol

import pjsua2 as pj

from app.media.audio import CALL_RATE, FRAME_MS, SAMPLE_WIDTH, frame_bytes
from app.sip.bytevector import byte_vector_to_bytes

log = logging.getLogger(__name__)


class FrameSink(Protocol):
    """The call core's side of the media path (implemented by `CallSession`)."""

    def push_frame(self, pcm: bytes) -> None:
        """Take one 20 ms frame of caller audio without blocking."""

    def pull_frame(self) -> bytes | None:
        """Give one 20 ms frame of bot audio, or None for silence, without blocking."""


class _IdleSink:
    """The sink of a port no call holds: drops what it hears, says nothing."""

    def push_frame(self, pcm: bytes) -> None:
        pass

    def pull_frame(self) -> bytes | None:
        return None


IDLE_SINK: FrameSink = _IdleSink()


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
    """Moves frames between the bridge and a `FrameSink`; counts what it had to drop.

    The sink is swapped with one attribute store (atomic under the GIL), so the clock thread
    sees either the old call's sink or the new one, never a half-set port.
    """

    def __init__(self, sink: FrameSink = IDLE_SINK, rate: int = CALL_RATE) -> None:
        super().__init__()
        self._sink = sink
        self._frame_size = frame_bytes(rate)
        self._silence = pj.ByteVector(bytes(self._frame_size))
        self.name = ""
        self.bad_frames = 0
        self.callback_errors = 0

    def attach(self, sink: FrameSink) -> None:
        """Serve a new call: counters start from zero."""
        self.bad_frames = self.callback_errors = 0
        self._sink = sink

    def detach(self) -> None:
        """Stop serving the call: frames go nowhere, silence comes out."""
        self._sink = IDLE_SINK

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        try:
            if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
                return
            pcm = byte_vector_to_bytes(frame.buf)
            if len(pcm) != self._frame_size:
                self.bad_frames += 1
                return
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
            frame.size = self._frame_size
        except Exception:
            self.callback_errors += 1


class PortPool:
    """Bridge ports for calls: created on demand, reused, destroyed only by `close`.

    Loop thread only (it calls pjsua2). The pool grows to the most calls ever up at once.
    """

    def __init__(self, rate: int = CALL_RATE) -> None:
        self._rate = rate
        self._idle: list[CallAudioPort] = []
        self._all: list[CallAudioPort] = []

    def acquire(self, sink: FrameSink) -> CallAudioPort:
        """A port in the bridge, attached to `sink`."""
        if self._idle:
            port = self._idle.pop()
        else:
            port = CallAudioPort(rate=self._rate)
            port.name = f"switchboard{len(self._all)}"
            port.createPort(port.name, pcm_port_format(self._rate))
            self._all.append(port)
        port.attach(sink)
        return port

    def release(self, port: CallAudioPort, call_id: str = "") -> None:
        """Take `port` back (its call's media is gone); report what it had to drop."""
        if port.bad_frames or port.callback_errors:
            log.warning(
                "call %s: %d malformed frames, %d media callback errors",
                call_id,
                port.bad_frames,
                port.callback_errors,
            )
        port.detach()
        if port not in self._idle:
            self._idle.append(port)

    def close(self) -> None:
        """At endpoint shutdown: let go of the ports without ever destroying them.

        Destroying one is unsafe at any point of shutdown: before `libDestroy` the bridge may
        still touch it (its removal is queued, and with no call connected the bridge's clock
        is paused, so the queue is never worked through); after `libDestroy` the destructor's
        own removal request hits a destroyed bridge and PJSIP aborts the process. Shutdown
        ends the process (one endpoint per process), so the few ports are left to the OS.
        """
        for port in self._all:
            port.detach()
            _never_destroy(port)
        self._idle.clear()
        self._all.clear()


def _never_destroy(port: CallAudioPort) -> None:
    """Hold one reference that is never released, so not even interpreter shutdown runs the
    port's C++ destructor."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(port))
