"""Piper neural TTS (piper-tts 1.x, ONNX Runtime): voices loaded once, audio streamed by sentence.

Streaming: Piper phonemises the whole prompt with its bundled eSpeak NG (milliseconds), splits
it into sentences there, and runs the voice model sentence by sentence; `synthesize` yields each
sentence's PCM as soon as the model has produced it, so playback starts after the first
sentence, not after the whole prompt.

Voices: `voices` is a directory of Piper voices (`<name>.onnx` beside `<name>.onnx.json`, as
published in rhasspy/piper-voices) or one `.onnx` file, whose directory is then the voices
directory and whose name the default voice. The default voice loads at start-up (an error
stops the server there, not on a call); another voice loads the first time a call asks for it,
once per process, under a per-voice lock (~0.5 s and ~60-100 MB per "medium" voice).

Rate: the engine's `sample_rate` is the default voice's (22050 Hz for most "medium" voices).
A voice with another rate ("low" voices are 16000 Hz) is resampled to it, so every prompt of an
engine comes at one rate and the call path's single resampler stays valid; a caller can pick
any installed voice by name without knowing its rate.

Threads: synthesis may run on several call threads at once. Piper serialises its eSpeak
phonemiser itself; ONNX Runtime sessions run concurrently. `cpu_threads` bounds each session's
intra-op threads (ONNX Runtime's default is one per core, which oversubscribes a server
synthesising for several calls).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.media.resample import Resampler
from app.tts.base import TtsEngine, TtsError

if TYPE_CHECKING:
    from piper import PiperVoice

ENGINE_NAME = "piper"
_INSTALL = "pip install 'switchboard[piper]'"
_VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_FETCH = (
    "download a voice's .onnx and .onnx.json from https://huggingface.co/rhasspy/piper-voices "
    "on a machine with network (the server never downloads)"
)

VoiceLoader = Callable[[Path, Path], "PiperVoice"]
"""Loads one voice from (model path, config path): the model boundary."""


class PiperEngine(TtsEngine):
    """Piper voices from a directory (or one model file), synthesised sentence by sentence.

    `voice`: the default voice's name (the model file's stem; may be omitted when `voices` is a
    file or a directory with a single voice). `length_scale`: phoneme duration factor, the
    inverse of speaking rate (1.0 the voice's own pace, 0.8 faster, 1.2 slower; None: the
    voice's config). `noise_scale`, `noise_w_scale`: None keeps the voice's. `volume` scales
    Piper's output, which it normalises to full scale per sentence (0.9 leaves headroom for
    the resampling to 8 kHz, whose filter overshoots a full-scale peak).
    `sentence_silence_s`: silence after each sentence.
    `load_voice` replaces how a voice is loaded (default: ONNX Runtime on CPU or CUDA).
    """

    name = ENGINE_NAME

    def __init__(
        self,
        voices: str | Path,
        voice: str | None = None,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        volume: float = 0.9,
        sentence_silence_s: float = 0.0,
        cpu_threads: int = 1,
        use_cuda: bool = False,
        load_voice: VoiceLoader | None = None,
    ) -> None:
        if length_scale is not None and not 0.25 <= length_scale <= 4.0:
            raise TtsError(f"piper length_scale must be 0.25..4.0, got {length_scale}")
        if not 0.0 < volume <= 1.0:
            raise TtsError(f"piper volume must be in (0, 1], got {volume}")
        if not 0.0 <= sentence_silence_s <= 5.0:
            raise TtsError(f"piper sentence_silence_s must be 0..5, got {sentence_silence_s}")
        if cpu_threads < 0:
            raise TtsError(f"piper cpu_threads must be >= 0 (0: one per core), got {cpu_threads}")
        path = Path(voices).expanduser()
        self.voices_dir = path.parent if path.suffix == ".onnx" else path
        if not self.voices_dir.is_dir():
            raise TtsError(f"Piper voices directory {self.voices_dir} not found; {_FETCH}")
        if path.suffix == ".onnx":
            if voice is not None and voice != path.stem:
                raise TtsError(f"piper voice {voice!r} given with the model file {path}")
            default = path.stem
        else:
            default = voice or self._only_voice()
        self.length_scale = length_scale
        self.noise_scale = noise_scale
        self.noise_w_scale = noise_w_scale
        self.volume = volume
        self.sentence_silence_s = sentence_silence_s
        self._load_voice = load_voice or _onnx_loader(cpu_threads, use_cuda)
        self._voices: dict[str, Any] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.voice = default.removesuffix(".onnx")
        self.sample_rate = _rate(self._get(default), default)

    def available_voices(self) -> list[str]:
        """Names of the voices in the voices directory (model and config both present)."""
        return sorted(
            model.stem
            for model in self.voices_dir.glob("*.onnx")
            if model.with_name(model.name + ".json").is_file()
        )

    def has_voice(self, voice: str) -> bool:
        stem = voice.removesuffix(".onnx")
        return stem in self._voices or stem in self.available_voices()

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        """Yield each sentence's 16-bit mono PCM at `sample_rate` as soon as it is rendered."""
        name = self.voice if voice is None else voice
        piper_voice = self._get(name)  # an unknown voice fails even for blank text
        if not text.strip():
            return
        rate = _rate(piper_voice, name)
        resampler = Resampler(rate, self.sample_rate) if rate != self.sample_rate else None
        silence = b"\x00\x00" * round(self.sentence_silence_s * rate)
        chunks = piper_voice.synthesize(_plain(text), syn_config=self._syn_config())
        for pcm in _sentence_pcm(chunks, rate, name):
            pcm += silence
            yield resampler.process(pcm) if resampler else pcm
        if resampler:
            tail = resampler.flush()
            if tail:
                yield tail

    def _syn_config(self) -> Any:
        from piper import SynthesisConfig

        return SynthesisConfig(
            length_scale=self.length_scale,
            noise_scale=self.noise_scale,
            noise_w_scale=self.noise_w_scale,
            volume=self.volume,
        )

    def _only_voice(self) -> str:
        names = self.available_voices()
        if len(names) == 1:
            return names[0]
        listing = ", ".join(names) if names else "none"
        raise TtsError(
            f"name the default Piper voice (tts voice): {self.voices_dir} holds {listing}"
        )

    def _get(self, name: str) -> Any:
        """The voice `name`, loading it on first use; one load per voice even under races."""
        stem = name.removesuffix(".onnx")
        voice = self._voices.get(stem)
        if voice is not None:
            return voice
        if not _VOICE_NAME.fullmatch(stem):
            raise TtsError(f"invalid Piper voice name {name!r}")
        model, config = self._paths(stem)
        with self._lock:
            lock = self._loading.setdefault(stem, threading.Lock())
        with lock:
            voice = self._voices.get(stem)
            if voice is None:
                voice = self._load(model, config)
                self._voices[stem] = voice
        return voice

    def _paths(self, stem: str) -> tuple[Path, Path]:
        model = self.voices_dir / f"{stem}.onnx"
        config = self.voices_dir / f"{stem}.onnx.json"
        if not model.is_file():
            available = ", ".join(self.available_voices()) or "none"
            raise TtsError(
                f"Piper voice {stem!r} not found: no {model} (installed: {available}); {_FETCH}"
            )
        if not config.is_file():
            raise TtsError(
                f"Piper voice {stem!r} has no config {config} beside its model; {_FETCH}"
            )
        return model, config

    def _load(self, model: Path, config: Path) -> Any:
        try:
            return self._load_voice(model, config)
        except TtsError:
            raise
        except ImportError as exc:
            raise TtsError(f"piper-tts is not installed ({exc}): {_INSTALL}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise TtsError(f"Piper voice config {config} is not usable: {exc!r}") from exc
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TtsError(f"Piper could not load the voice model {model}: {exc}") from exc


def _onnx_loader(cpu_threads: int, use_cuda: bool) -> VoiceLoader:
    """Load a voice as `PiperVoice.load` does, with the session's thread count set."""

    def load(model: Path, config: Path) -> PiperVoice:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        try:
            config_dict = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TtsError(f"Piper voice config {config} is not readable JSON: {exc}") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_threads
        options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        return PiperVoice(
            config=PiperConfig.from_dict(config_dict),
            session=onnxruntime.InferenceSession(
                str(model), sess_options=options, providers=providers
            ),
        )

    return load


def _rate(voice: Any, name: str) -> int:
    rate = getattr(getattr(voice, "config", None), "sample_rate", None)
    if not isinstance(rate, int) or rate <= 0:
        raise TtsError(f"Piper voice {name!r} has no valid audio.sample_rate in its config")
    return rate


def _plain(text: str) -> str:
    """Text as words only: Piper reads "[[ ... ]]" as raw phonemes, which no prompt means."""
    return text.replace("[[", "[ [").replace("]]", "] ]")


def _sentence_pcm(chunks: Any, rate: int, name: str) -> Iterator[bytes]:
    """16-bit PCM of each AudioChunk (one per sentence) Piper yields, checked."""
    iterator = iter(chunks)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except TtsError:
            raise
        except Exception as exc:  # phonemiser or ONNX Runtime failure mid-prompt
            raise TtsError(f"Piper voice {name!r} failed to synthesise: {exc}") from exc
        if chunk.sample_rate != rate or chunk.sample_channels != 1 or chunk.sample_width != 2:
            raise TtsError(
                f"Piper voice {name!r} produced {chunk.sample_rate} Hz, "
                f"{chunk.sample_channels} channel(s), {chunk.sample_width * 8} bit; "
                f"expected {rate} Hz mono 16-bit"
            )
        pcm = np.asarray(chunk.audio_int16_array, dtype="<i2").tobytes()
        if pcm:
            yield pcm
