"""`engine = "auto"`: the best recogniser and voice installed on this machine, decided at start.

A fresh server should understand callers as well as the machine allows without anyone editing
its configuration: once `switchboard models pull` (or `models install`) has put a Whisper model
or a Piper voice in the models folder, the next start uses it, with the zero-download engines
(PocketSphinx, eSpeak NG) behind it as fallbacks. Without models it is PocketSphinx + eSpeak.

Order of preference, and why:
- ASR: Whisper (faster-whisper importable and a model installed) over Vosk (importable and its
  model installed) over PocketSphinx. Among Whisper models: the configured `asr.whisper.model`
  when installed, else English-only before multilingual and small before large on a CPU
  (`WHISPER_PREFERENCE`): on FSDD digit strings tiny.en and base score alike (83% exact, see
  README) while base costs twice the decode time of tiny.en on two cores.
- TTS: Piper (piper-tts importable and a voice installed: the configured `tts.piper.voice`,
  else `PIPER_PREFERENCE`, else any installed voice) over eSpeak NG.

An explicitly configured engine is never second-guessed; "auto" is only the default.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from app.config import AUTO, Config
from app.models.errors import ModelMissing
from app.models.layout import PIPER_DIR, installed_names, layout_problems
from app.models.resolve import resolve_model, resolve_piper_voices

WHISPER_PREFERENCE = (
    "faster-whisper-base.en",
    "faster-whisper-tiny.en",
    "faster-whisper-small.en",
    "faster-whisper-base",
)
PIPER_PREFERENCE = ("en_US-joe-medium", "en_US-lessac-medium", "en_US-amy-medium")
FLOOR_ASR, FLOOR_TTS = "pocketsphinx", "espeak"


@dataclass(frozen=True, slots=True)
class EngineChoice:
    """The configuration with concrete engines, and a line saying what was chosen."""

    config: Config
    asr: str
    tts: str

    @property
    def summary(self) -> str:
        return f"asr {self.asr}, tts {self.tts}"


def choose_engines(config: Config) -> EngineChoice:
    """Replace `auto` engines in `config` by the best installed ones (see the module doc)."""
    asr, tts = config.asr, config.tts
    if asr.engine == AUTO:
        name, model = _best_asr(config)
        fallbacks = asr.fallbacks or ((FLOOR_ASR,) if name != FLOOR_ASR else ())
        asr = dataclasses.replace(asr, engine=name, fallbacks=fallbacks)
        if name == "whisper":
            asr = dataclasses.replace(asr, whisper=dataclasses.replace(asr.whisper, model=model))
    if tts.engine == AUTO:
        voice = _best_voice(config)
        name = "piper" if voice else FLOOR_TTS
        fallbacks = tts.fallbacks or ((FLOOR_TTS,) if name != FLOOR_TTS else ())
        tts = dataclasses.replace(tts, engine=name, fallbacks=fallbacks)
        if voice:
            tts = dataclasses.replace(tts, piper=dataclasses.replace(tts.piper, voice=voice))
    chosen = dataclasses.replace(config, asr=asr, tts=tts)
    return EngineChoice(chosen, _describe_asr(chosen), _describe_tts(chosen))


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _best_asr(config: Config) -> tuple[str, str]:
    models = config.models.dir
    if _importable("faster_whisper"):
        configured = config.asr.whisper.model
        for name in (configured, *WHISPER_PREFERENCE, *_installed(models, "whisper")):
            if _usable_model(models, "whisper", name):
                return "whisper", name
    if _importable("vosk") and _usable_model(models, "vosk", config.asr.vosk.model):
        return "vosk", config.asr.vosk.model
    return FLOOR_ASR, ""


def _best_voice(config: Config) -> str:
    if not _importable("piper"):
        return ""
    piper = config.tts.piper
    voices = Path(piper.voices) if piper.voices.strip() else config.models.dir / PIPER_DIR
    installed = sorted(p.stem for p in voices.glob("*.onnx")) if voices.is_dir() else []
    for voice in (piper.voice, *PIPER_PREFERENCE, *installed):
        try:
            resolve_piper_voices(config.models.dir, piper.voices, voice)
        except ModelMissing:
            continue
        return voice
    return ""


def _usable_model(models: Path, kind: str, name: str) -> bool:
    try:
        resolve_model(models, kind, name)
    except ModelMissing:
        return False
    return True


def _installed(models: Path, kind: str) -> list[str]:
    return [
        name
        for name in installed_names(models)
        if (models / name).is_dir() and not layout_problems(kind, models / name)
    ]


def _describe_asr(config: Config) -> str:
    asr = config.asr
    models = {"whisper": asr.whisper.model, "vosk": asr.vosk.model, "openai": asr.openai.model}
    return " > ".join(_with_model(name, models.get(name)) for name in asr.chain)


def _describe_tts(config: Config) -> str:
    tts = config.tts
    voices = {"piper": tts.piper.voice, "espeak": tts.espeak.voice, "openai": tts.openai.voice}
    return " > ".join(_with_model(name, voices.get(name)) for name in tts.chain)


def _with_model(name: str, model: str | None) -> str:
    return f"{name} ({model})" if model else name
