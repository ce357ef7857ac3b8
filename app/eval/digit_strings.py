"""Digit strings a caller reads out, built from single-digit recordings (FSDD).

A PIN or an account number on the phone is digits with pauses between them. FSDD records one
digit per file, four speakers; its README says how to make caller input of them: one speaker's
clips joined with natural 200-600 ms pauses. `build` does that, seeded, and writes 8 kHz WAVs
with a manifest `eval asr` reads: `text` is the digits as words, and the tags are the speaker's
(speaker, accent) plus `length`. The pauses are a quiet line (Gaussian noise at about -70 dBFS),
not digital zero, as a call delivers them.
"""

from __future__ import annotations

import json
import random
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.asr.numbers import digit_words
from app.media.audio import CALL_RATE

LINE_NOISE_RMS = 10.0
"""Sample RMS of the line between digits (-70 dBFS): not digital silence."""


@dataclass(frozen=True, slots=True)
class Spec:
    count: int = 100
    min_digits: int = 4
    max_digits: int = 8
    min_pause_ms: int = 200
    max_pause_ms: int = 600
    seed: int = 0


def build(fsdd: Path, out: Path, spec: Spec = Spec()) -> Path:
    """Write `spec.count` digit strings (speakers in turn) to `out`; return the manifest path."""
    rows = [json.loads(line) for line in (fsdd / "manifest.jsonl").read_text().splitlines() if line]
    by_speaker: dict[str, list[dict]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker"], []).append(row)
    if not by_speaker:
        raise ValueError(f"{fsdd}/manifest.jsonl lists no clips")
    speakers = sorted(by_speaker)
    rng = random.Random(spec.seed)
    noise = np.random.default_rng(spec.seed)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(spec.count):
        speaker = speakers[i % len(speakers)]
        picks = [
            rng.choice(by_speaker[speaker])
            for _ in range(rng.randint(spec.min_digits, spec.max_digits))
        ]
        parts = [_line(noise, rng.randint(100, 300))]
        for n, row in enumerate(picks):
            parts.append(_clip(fsdd / row["audio"]))
            if n < len(picks) - 1:
                parts.append(_line(noise, rng.randint(spec.min_pause_ms, spec.max_pause_ms)))
        parts.append(_line(noise, rng.randint(100, 300)))
        pcm = np.clip(np.concatenate(parts), -32768, 32767).astype("<i2").tobytes()
        digits = "".join(row["audio"].split("_", 1)[0] for row in picks)
        name = f"{i:03d}_{speaker}_{digits}.wav"
        with wave.open(str(out / name), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(CALL_RATE)
            wav.writeframes(pcm)
        first = picks[0]
        lines.append(
            {
                "audio": name,
                "text": digit_words(digits),
                "speaker": speaker,
                "accent": first.get("accent", ""),
                "length": str(len(digits)),
                "sample_rate": CALL_RATE,
            }
        )
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _line(noise: np.random.Generator, ms: int) -> np.ndarray:
    return noise.normal(0.0, LINE_NOISE_RMS, CALL_RATE * ms // 1000)


def _clip(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        if wav.getframerate() != CALL_RATE or wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: expected 8 kHz 16-bit mono (FSDD)")
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64)
    return samples - samples.mean()
