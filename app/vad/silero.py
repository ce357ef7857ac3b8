"""Silero VAD (v6) on onnxruntime: a small neural detector, one decision per 32 ms window.

The model is the ONNX file faster-whisper ships (`faster_whisper/assets/silero_vad_v6.onnx`),
run with onnxruntime directly: the `silero-vad` pip package would pull in torch.

Model protocol (checked at load): inputs `input` float32 [n, 576] (one 512-sample window at
16 kHz, 32 ms, after the previous window's last 64 samples as context), `h` and `c` float32
[1, 1, 128] (LSTM state); outputs `speech_probs` [n], `hn`, `cn`. This export has no
sample-rate input and takes 16 kHz only, so 8 kHz call audio is upsampled first.

Rates: 8 kHz goes through a 2 ms-delay interpolator here rather than `app.media.resample`: that
soxr stream emits its output in ~100 ms bursts (1660 samples every fifth 20 ms frame), which
would make every decision 12-100 ms stale. Measured on FSDD and the speech samples, the
interpolator's speech decisions agree with soxr HQ's on ~99 % of windows; moving the window
grid by 1 ms changes them more. 32/48 kHz input is rare and goes through
`app.media.resample`, latency and all.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from app.media.audio import frame_samples
from app.media.resample import Resampler
from app.vad.base import VadError, check_frame, check_rate

ENGINE_NAME = "silero"
MODEL_FILE = "silero_vad_v6.onnx"
MODEL_RATE = 16000
WINDOW = 512
"""New samples per model call at 16 kHz (32 ms)."""
CONTEXT = 64
"""Samples of the previous window prepended to each call, as Silero's own iterator does."""
STATE_SHAPE = (1, 1, 128)
HYSTERESIS = 0.15
"""Speech ends only below threshold - 0.15 (Silero's `neg_threshold`), so it does not flicker."""
INSTALL_HINT = "pip install 'switchboard[silero]'"

_INT16_SCALE = np.float32(1.0 / 32768.0)
_HALF_TAPS = 16
"""Interpolator half-length, in 8 kHz samples: also its delay (2 ms)."""
UPSAMPLE_DELAY = 2 * _HALF_TAPS
"""What the 8 kHz path adds before the model sees a sample, in 16 kHz samples."""

_sessions: dict[Path, Any] = {}
_sessions_lock = threading.Lock()


def default_model_path() -> Path:
    """Where faster-whisper keeps the model; found without importing it (ctranslate2 is heavy)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise VadError(
            f"Silero VAD uses the model bundled with faster-whisper, which is not installed: "
            f"{INSTALL_HINT} (or pass model_path)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / MODEL_FILE


def load_session(model_path: str | Path | None = None) -> Any:
    """The process-wide InferenceSession for `model_path`, created on first use.

    One session serves every detector: `run()` is thread-safe and all per-stream state travels
    in the inputs. One thread per run, since a box with two cores carries many calls at once.
    """
    path = Path(model_path) if model_path is not None else default_model_path()
    path = path.expanduser().resolve()
    with _sessions_lock:
        session = _sessions.get(path)
        if session is None:
            session = _sessions[path] = _open_session(path)
    return session


def _open_session(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise VadError(
            f"Silero VAD needs onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from exc
    if not path.is_file():
        raise VadError(f"Silero VAD model not found: looked for {path}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise VadError(f"could not load the Silero VAD model {path}: {exc}") from exc
    _check_signature(session, path)
    return session


def _check_signature(session: Any, path: Path) -> None:
    """Older faster-whisper releases ship a Silero model with another protocol: refuse it."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if (
        set(inputs) != {"input", "h", "c"}
        or inputs["input"][-1] != CONTEXT + WINDOW
        or list(inputs["h"]) != list(STATE_SHAPE)
        or len(outputs) != 3
    ):
        raise VadError(
            f"{path} is not a Silero v6 16 kHz model (inputs {inputs}, outputs {outputs}); "
            f"expected input [n, {CONTEXT + WINDOW}], h and c {list(STATE_SHAPE)}"
        )


class _Upsample2x:
    """8 -> 16 kHz for fixed-size frames: windowed-sinc interpolation, 2 ms delay, no bursts.

    Even outputs are the input samples, odd ones the half-sample points of a 32-tap
    Kaiser-windowed sinc: not soxr's stopband, but images above 4 kHz stay low enough that
    the model's decisions match (see the module docstring).
    """

    def __init__(self, frame_len: int) -> None:
        taps = 2 * _HALF_TAPS
        j = np.arange(taps)
        kernel = np.sinc(j - _HALF_TAPS + 0.5) * np.kaiser(taps, 8.0)
        self._kernel = (kernel / kernel.sum()).astype(np.float32)
        self._history = np.zeros(taps - 1 + frame_len, dtype=np.float32)
        self._windows = np.lib.stride_tricks.sliding_window_view(self._history, taps)
        self._odd = np.empty(frame_len, dtype=np.float32)
        self._out = np.empty(2 * frame_len, dtype=np.float32)
        self._tail = taps - 1

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Upsample one frame of int16 samples; returns a float32 view reused by the next call."""
        h = self._history
        np.multiply(samples, _INT16_SCALE, out=h[self._tail :])
        np.matmul(self._windows, self._kernel, out=self._odd)
        n = samples.shape[0]
        self._out[0::2] = h[_HALF_TAPS - 1 : _HALF_TAPS - 1 + n]
        self._out[1::2] = self._odd
        h[: self._tail] = h[n:]
        return self._out

    def reset(self) -> None:
        self._history.fill(0.0)


class SileroDetector:
    """One audio stream's Silero state: LSTM state, window context, partial-window buffer.

    Each 20 ms frame adds 320 samples at 16 kHz; a decision is made every 512, so `is_speech`
    returns the hysteresis state after the latest complete window (unchanged on frames that
    complete none). `probability` is the latest window's raw speech probability.
    """

    name = ENGINE_NAME

    def __init__(
        self,
        sample_rate: int = 8000,
        threshold: float = 0.5,
        *,
        model_path: str | Path | None = None,
    ) -> None:
        check_rate(sample_rate)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a speech probability in (0, 1), got {threshold!r}")
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.neg_threshold = max(threshold - HYSTERESIS, 0.01)
        self._session = load_session(model_path)
        self._frame_len = frame_samples(sample_rate)
        self._upsampler = _Upsample2x(self._frame_len) if sample_rate == 8000 else None
        self._resampler = (
            Resampler(sample_rate, MODEL_RATE) if sample_rate not in (8000, MODEL_RATE) else None
        )
        # The model input doubles as the sample buffer: [0:64] context, [64:64+fill] new audio.
        self._input = np.zeros((1, CONTEXT + WINDOW), dtype=np.float32)
        self._fill = 0
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._speaking = False
        self.probability = 0.0

    def is_speech(self, frame: bytes) -> bool:
        check_frame(frame, self.sample_rate)
        samples = np.frombuffer(frame, dtype="<i2")
        if self._upsampler is not None:
            self._push(self._upsampler.process(samples), np.float32(1.0))
        elif self._resampler is not None:
            self._push(np.frombuffer(self._resampler.process(frame), dtype="<i2"), _INT16_SCALE)
        else:
            self._push(samples, _INT16_SCALE)
        return self._speaking

    def reset(self) -> None:
        self._input.fill(0.0)
        self._fill = 0
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._speaking = False
        self.probability = 0.0
        if self._upsampler is not None:
            self._upsampler.reset()
        if self._resampler is not None:
            self._resampler.flush()

    def _push(self, samples: np.ndarray, scale: np.float32) -> None:
        """Copy 16 kHz samples into the window, running the model each time it fills."""
        row = self._input[0]
        pos, total = 0, samples.shape[0]
        while pos < total:
            take = min(WINDOW - self._fill, total - pos)
            start = CONTEXT + self._fill
            np.multiply(samples[pos : pos + take], scale, out=row[start : start + take])
            self._fill += take
            pos += take
            if self._fill == WINDOW:
                self._run_window()
                row[:CONTEXT] = row[WINDOW:]
                self._fill = 0

    def _run_window(self) -> None:
        probs, self._h, self._c = self._session.run(
            None, {"input": self._input, "h": self._h, "c": self._c}
        )
        prob = float(probs.reshape(-1)[0])
        self.probability = prob
        if prob >= self.threshold:
            self._speaking = True
        elif prob < self.neg_threshold:
            self._speaking = False
