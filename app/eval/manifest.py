"""Evaluation manifests: which clips, what was said, and the cohort tags of each.

A manifest is JSONL (one object per line) or CSV (a header row), with `audio` (a WAV path,
relative to the manifest) and `text` (the reference transcript); every other field is a cohort
tag (speaker, accent, gender, channel...), except `sample_rate`, which, when given, must match
the file. Everything is checked before a run starts, and every problem is reported at once with
its line: a run that dies on clip 1,700 of 2,000 wastes an hour.

The manifest's bytes and every audio file's bytes are hashed into `content_sha256`, which each
result records: the same hash means the same evaluation data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import wave
from dataclasses import dataclass, field
from pathlib import Path

from app.media.audio import CALL_RATE, SAMPLE_WIDTH

RESERVED = frozenset(("audio", "text", "sample_rate"))
"""Manifest fields that are not cohort tags."""
MAX_PROBLEMS_SHOWN = 20


class ManifestError(ValueError):
    """The manifest cannot be evaluated; the message lists every problem with its line."""


@dataclass(frozen=True, slots=True)
class Clip:
    """One manifest entry, checked: the file exists and is 16-bit mono WAV of known rate."""

    line: int
    audio: Path
    text: str
    tags: dict[str, str]
    sample_rate: int
    duration_s: float

    @property
    def name(self) -> str:
        return self.audio.name

    def read_pcm(self) -> bytes:
        """The clip's 16-bit mono PCM at `sample_rate`."""
        with wave.open(str(self.audio), "rb") as wav:
            return wav.readframes(wav.getnframes())


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    clips: tuple[Clip, ...]
    manifest_sha256: str
    content_sha256: str
    """Hash of the manifest and of every audio file's bytes, in manifest order."""
    tag_names: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "clips": len(self.clips),
            "manifest_sha256": self.manifest_sha256,
            "content_sha256": self.content_sha256,
            "tags": list(self.tag_names),
            "audio_s": round(sum(c.duration_s for c in self.clips), 3),
        }


def load_manifest(path: Path) -> Manifest:
    """Read and check `path`; raises ManifestError naming every problem found."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    problems: list[str] = []
    rows = _rows(path, raw, problems)
    clips: list[Clip] = []
    content = hashlib.sha256(raw)
    seen_paths: dict[Path, int] = {}
    seen_audio: dict[str, int] = {}
    for line, row in rows:
        clip, digest = _clip(path.parent, line, row, problems)
        if clip is None or digest is None:
            continue
        resolved = clip.audio.resolve()
        if resolved in seen_paths:
            problems.append(
                f"line {line}: duplicate entry for {clip.audio.name} (first at line "
                f"{seen_paths[resolved]})"
            )
            continue
        if digest in seen_audio:
            problems.append(
                f"line {line}: {clip.audio.name} has the same audio as line {seen_audio[digest]}"
            )
            continue
        seen_paths[resolved] = line
        seen_audio[digest] = line
        content.update(digest.encode())
        clips.append(clip)
    if not rows and not problems:
        problems.append("no entries")
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise ManifestError(
            f"{path}: {len(problems)} problem(s):\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )
    tag_names = tuple(dict.fromkeys(name for clip in clips for name in clip.tags))
    return Manifest(
        path=path,
        clips=tuple(clips),
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        content_sha256=content.hexdigest(),
        tag_names=tag_names,
    )


def _rows(path: Path, raw: bytes, problems: list[str]) -> list[tuple[int, dict[str, object]]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"audio", "text"} - set(reader.fieldnames or ())
        if missing:
            problems.append(f"the CSV header lacks {', '.join(sorted(missing))}")
            return []
        return [(i, dict(row)) for i, row in enumerate(reader, start=2)]
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {i}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {i}: expected a JSON object, got {type(row).__name__}")
            continue
        rows.append((i, row))
    return rows


def _clip(
    base: Path, line: int, row: dict[str, object], problems: list[str]
) -> tuple[Clip | None, str | None]:
    audio, text = row.get("audio"), row.get("text")
    if not isinstance(audio, str) or not audio.strip():
        problems.append(f"line {line}: no 'audio' path")
        return None, None
    if not isinstance(text, str) or not text.strip():
        problems.append(f"line {line}: {audio}: empty reference 'text'")
        return None, None
    file = base / audio
    try:
        data = file.read_bytes()
    except OSError as exc:
        problems.append(f"line {line}: {audio}: {exc.strerror or exc}")
        return None, None
    try:
        with wave.open(str(file), "rb") as wav:
            channels, width = wav.getnchannels(), wav.getsampwidth()
            rate, frames = wav.getframerate(), wav.getnframes()
    except (wave.Error, EOFError) as exc:
        problems.append(f"line {line}: {audio}: not a PCM WAV file ({exc})")
        return None, None
    if channels != 1 or width != SAMPLE_WIDTH:
        problems.append(
            f"line {line}: {audio}: {channels} channel(s) of {8 * width}-bit samples; "
            "expected 16-bit mono"
        )
        return None, None
    declared = row.get("sample_rate")
    if declared not in (None, "") and str(declared) != str(rate):
        problems.append(f"line {line}: {audio}: the manifest says {declared} Hz, the file {rate}")
        return None, None
    if rate < CALL_RATE:
        problems.append(f"line {line}: {audio}: {rate} Hz is below the telephone's {CALL_RATE}")
        return None, None
    if frames == 0:
        problems.append(f"line {line}: {audio}: no audio")
        return None, None
    tags = {k: str(v) for k, v in row.items() if k not in RESERVED and v not in (None, "")}
    clip = Clip(line, file, text.strip(), tags, rate, frames / rate)
    return clip, hashlib.sha256(data).hexdigest()
