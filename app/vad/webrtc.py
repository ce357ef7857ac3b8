"""webrtcvad (the WebRTC GMM detector): microseconds per frame, no model, 8/16/32/48 kHz.

It flickers inside words and mistakes steady noise for speech more than Silero does, but it is
cheap enough to run on every call of a busy two-core box.
"""

from __future__ import annotations

import webrtcvad

from app.vad.base import check_frame, check_rate

ENGINE_NAME = "webrtc"


class WebRtcDetector:
    """One `webrtcvad.Vad` per stream: it adapts its noise model, so streams must not share."""

    name = ENGINE_NAME

    def __init__(self, sample_rate: int = 8000, aggressiveness: int = 2) -> None:
        check_rate(sample_rate)
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        self.sample_rate = sample_rate
        self.aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        check_frame(frame, self.sample_rate)
        return self._vad.is_speech(frame, self.sample_rate)

    def reset(self) -> None:
        # The library has no reset: a new instance is the only way to drop the adapted state.
        self._vad = webrtcvad.Vad(self.aggressiveness)
