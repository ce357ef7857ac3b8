"""Voice-activity detection: one per-frame interface (`base.py`), one module per engine.

`create_detector("webrtc" | "silero", ...)` builds a detector; the engines' modules are
imported only when asked for, so a server without onnxruntime still runs with webrtcvad.
"""

from app.vad.base import VAD_RATES, VadError, VoiceDetector, create_detector

__all__ = ["VAD_RATES", "VadError", "VoiceDetector", "create_detector"]
