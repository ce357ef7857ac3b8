"""`switchboard eval tts`: is each voice understood on the phone, and how soon does it speak?

A voice that sounds fine on a laptop can blur on an 8 kHz G.711 line, and a read-back of an
account number is worthless if the caller cannot hear the digits. So each prompt goes the way
a call sends it: split into the pieces the call synthesises one by one (`split_for_speech`),
synthesised by the engine, resampled to 8 kHz, through the codec and back; then Whisper (the
configured `[asr.whisper]` model) transcribes it, and the transcript is scored against the
prompt text with the normalisation of `eval asr` (numbers as digits). A listener model is no
human panel, but a voice Whisper cannot read is one a caller will ask to repeat.

Per engine: corpus WER, share of prompts heard exactly, digit strings heard exactly (prompts
with numbers), time to first audio (the first piece's synthesis, which is what a caller waits
for) p50/p95, and the real-time factor of the whole synthesis.

Prompts: the dialplans' own (`[dialplans] dir`): every prompt without variables, and every
prompt whose variables are all read with `| digits`, rendered with sample numbers; or a text
file given with `--prompts`, one prompt a line.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer

from app.asr.base import AsrEngine, RecognitionOptions
from app.asr.numbers import spoken_digits
from app.dialog.template import Field, Template
from app.eval.textnorm import normalise
from app.media.audio import CALL_RATE, frame_bytes
from app.media.g711 import alaw_to_pcm, pcm_to_alaw, pcm_to_ulaw, ulaw_to_pcm
from app.media.resample import Resampler
from app.tts.base import TtsEngine
from app.tts.sentences import split_for_speech

SAMPLE_NUMBERS = ("40719", "8316", "205748", "9021", "3350871")
"""Values for `{x | digits}` fields: digit strings with repeats and zeros, as callers have."""


@dataclass(slots=True)
class PromptResult:
    text: str
    heard: str
    word_errors: int
    ref_words: int
    digits_ok: bool | None
    first_audio_ms: float
    synth_ms: float
    audio_ms: float


@dataclass(slots=True)
class VoiceReport:
    engine: str
    voice: str
    prompts: list[PromptResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        words = sum(p.ref_words for p in self.prompts)
        errors = sum(p.word_errors for p in self.prompts)
        digits = [p.digits_ok for p in self.prompts if p.digits_ok is not None]
        first = sorted(p.first_audio_ms for p in self.prompts)
        synth = sum(p.synth_ms for p in self.prompts)
        audio = sum(p.audio_ms for p in self.prompts)
        return {
            "engine": self.engine,
            "voice": self.voice,
            "prompts": len(self.prompts),
            "wer": round(errors / words, 4) if words else None,
            "exact": round(sum(p.word_errors == 0 for p in self.prompts) / len(self.prompts), 4),
            "digit_prompts": len(digits),
            "digits_exact": round(sum(digits) / len(digits), 4) if digits else None,
            "first_audio_ms_p50": round(statistics.median(first), 1),
            "first_audio_ms_p95": round(first[min(len(first) - 1, int(0.95 * len(first)))], 1),
            "rtf": round(synth / audio, 3) if audio else None,
        }


def dialplan_prompts(templates: Iterable[Template]) -> list[str]:
    """Prompts of the dialplans a call can say as written or with digit strings filled in."""
    out: list[str] = []
    numbers = iter(SAMPLE_NUMBERS * 100)
    for template in templates:
        fields = [p for p in template.parts if isinstance(p, Field)]
        if any(f.filters != ("digits",) for f in fields):
            continue
        text = template.render({f.name: next(numbers) for f in fields}).strip()
        if text and text not in out:
            out.append(text)
    return out


def evaluate_voice(
    name: str,
    tts: TtsEngine,
    voice: str | None,
    prompts: Sequence[str],
    listener: AsrEngine,
    codec: str = "PCMU",
) -> VoiceReport:
    """Every prompt through `tts`, the telephone channel and `listener`."""
    report = VoiceReport(name, voice or "(default)")
    for text in prompts:
        pcm, first_ms, synth_ms = _synthesise(tts, voice, text)
        line = _telephone(pcm, codec)
        heard = _transcribe(listener, line)
        reference, hypothesis = normalise(text), normalise(heard)
        errors = jiwer.process_words(reference, hypothesis or "-")
        wrong = errors.substitutions + errors.deletions + errors.insertions
        expected = spoken_digits(text)
        report.prompts.append(
            PromptResult(
                text=text,
                heard=heard,
                word_errors=wrong,
                ref_words=len(reference.split()),
                digits_ok=(spoken_digits(heard) == expected) if len(expected) >= 3 else None,
                first_audio_ms=first_ms,
                synth_ms=synth_ms,
                audio_ms=1000 * len(line) / (2 * CALL_RATE),
            )
        )
    return report


def _synthesise(tts: TtsEngine, voice: str | None, text: str) -> tuple[bytes, float, float]:
    """8 kHz PCM of `text` piece by piece as a call renders it; (pcm, first audio ms, total ms)."""
    resampler = Resampler(tts.sample_rate, CALL_RATE)
    out = bytearray()
    first_ms: float | None = None
    started = time.perf_counter()
    for piece in split_for_speech(text):
        for chunk in tts.synthesize(piece, voice):
            if first_ms is None:
                first_ms = 1000 * (time.perf_counter() - started)
            out += resampler.process(chunk)
    total_ms = 1000 * (time.perf_counter() - started)
    out += resampler.flush()
    return bytes(out), first_ms if first_ms is not None else total_ms, total_ms


def _telephone(pcm: bytes, codec: str) -> bytes:
    if codec == "PCMA":
        return alaw_to_pcm(pcm_to_alaw(pcm))
    return ulaw_to_pcm(pcm_to_ulaw(pcm))


def _transcribe(listener: AsrEngine, pcm: bytes) -> str:
    stream = listener.open_stream(RecognitionOptions())
    step = frame_bytes(CALL_RATE)
    quiet = bytes(step * 20)
    for start in range(0, len(pcm) - step + 1, step):
        stream.feed(pcm[start : start + step])
    stream.feed(quiet)
    return stream.finish().text


def read_prompts(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one a line)")
    return prompts
