"""Where models live in the models folder, what a usable model of each kind holds, and the
install record (manifest) kept for every model installed by `switchboard models`.

    <dir>/<name>/                 a Vosk or faster-whisper model
    <dir>/piper/<voice>.onnx      a Piper voice, beside <voice>.onnx.json (PiperEngine's voices)
    <dir>/.manifests/<name>.json  each installed file's size and SHA-256, written at install
    <dir>/.downloads/<name>/      partial downloads, continued by the next pull
    <dir>/.staging/               installs being assembled; moved into place only when complete
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PIPER_DIR = "piper"
MANIFESTS_DIR = ".manifests"
DOWNLOADS_DIR = ".downloads"
STAGING_DIR = ".staging"
# What faster-whisper needs in a model folder (app.asr.whisper.MODEL_FILES; a test keeps the two
# equal without importing the engine here).
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json")
_CHUNK = 1 << 20


def model_location(models_dir: Path, kind: str, name: str) -> Path:
    """The folder a model is installed as; for a Piper voice, the voices folder holding it."""
    return models_dir / PIPER_DIR if kind == "piper" else models_dir / name


def is_installed(models_dir: Path, kind: str, name: str) -> bool:
    """Whether something is installed under the name (complete or not: see layout_problems)."""
    if kind == "piper":
        return (models_dir / PIPER_DIR / f"{name}.onnx").is_file()
    return (models_dir / name).is_dir()


def layout_problems(kind: str, path: Path, voice: str | None = None) -> list[str]:
    """What keeps `path` from loading as a `kind` model, as short phrases; [] when usable.

    For "piper", `path` is the voices folder and `voice` the voice's name.
    """
    if kind == "piper":
        if voice is None:
            raise ValueError("a Piper layout check needs the voice's name")
        return _piper_problems(path, voice)
    if not path.is_dir():
        return [f"{path} is not a folder"]
    if kind == "whisper":
        missing = [name for name in WHISPER_FILES if not (path / name).is_file()]
        return [f"{', '.join(missing)} missing (a CTranslate2 Whisper model)"] if missing else []
    if kind == "vosk":
        return _vosk_problems(path)
    raise ValueError(f"unknown model kind {kind!r}")


def _vosk_problems(path: Path) -> list[str]:
    # Vosk's loader (model.cc) reads the layout with am/ if am/final.mdl exists, else the old
    # flat one; either needs a decoding graph: HCLG.fst, or HCLr.fst with Gr.fst.
    def graph(folder: Path) -> bool:
        return (folder / "HCLG.fst").is_file() or (
            (folder / "HCLr.fst").is_file() and (folder / "Gr.fst").is_file()
        )

    if (path / "am" / "final.mdl").is_file():
        problems = []
        if not (path / "conf" / "mfcc.conf").is_file():
            problems.append("conf/mfcc.conf missing")
        if not graph(path / "graph"):
            problems.append("no graph (graph/HCLG.fst, or graph/HCLr.fst and graph/Gr.fst)")
        return problems
    if (path / "final.mdl").is_file():
        problems = [] if (path / "mfcc.conf").is_file() else ["mfcc.conf missing"]
        return problems if graph(path) else [*problems, "no graph (HCLG.fst, or HCLr.fst+Gr.fst)"]
    return ["am/final.mdl missing (not a Vosk model folder)"]


def _piper_problems(folder: Path, voice: str) -> list[str]:
    model, config = folder / f"{voice}.onnx", folder / f"{voice}.onnx.json"
    problems = [f"{p.name} missing" for p in (model, config) if not p.is_file()]
    if problems:
        return problems
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        rate = data["audio"]["sample_rate"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{config.name} is not a Piper voice config ({type(exc).__name__}: {exc})"]
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        return [f"{config.name}: audio.sample_rate is not a rate in Hz ({rate!r})"]
    return []


def guess_kind(path: Path) -> str | None:
    """The kind a model folder looks like, from its files; None when neither."""
    if (path / "model.bin").is_file():
        return "whisper"
    if (path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file():
        return "vosk"
    return None


def digests(path: Path, *, md5: bool = False) -> tuple[str, str]:
    """(SHA-256, MD5 or "") of a file's content, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    legacy = hashlib.md5(usedforsecurity=False) if md5 else None
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            if legacy is not None:
                legacy.update(chunk)
    return sha.hexdigest(), legacy.hexdigest() if legacy is not None else ""


def installed_names(models_dir: Path) -> list[str]:
    """Everything installed in the models folder: model folders, then voices."""
    if not models_dir.is_dir():
        return []
    folders = sorted(
        p.name
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != PIPER_DIR
    )
    voices_dir = models_dir / PIPER_DIR
    voices = sorted(p.stem for p in voices_dir.glob("*.onnx")) if voices_dir.is_dir() else []
    return [*folders, *voices]


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an install put in place: each file's (size, SHA-256), relative to the model's folder
    (for a voice, to the voices folder). `origin`: the URL or path it came from;
    `archive_sha256`: the verified archive's SHA-256 when it came from one."""

    name: str
    kind: str
    origin: str
    catalogue: bool
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    archive_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "kind": self.kind,
                "origin": self.origin,
                "catalogue": self.catalogue,
                "archive_sha256": self.archive_sha256,
                "files": {k: {"size": s, "sha256": h} for k, (s, h) in sorted(self.files.items())},
            },
            indent=2,
        )


def describe(root: Path, paths: list[str] | None = None) -> dict[str, tuple[int, str]]:
    """(size, SHA-256) of the files under `root` (all of them, or the relative `paths`)."""
    if paths is None:
        paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return {rel: ((root / rel).stat().st_size, digests(root / rel)[0]) for rel in paths}


def manifest_path(models_dir: Path, name: str) -> Path:
    return models_dir / MANIFESTS_DIR / f"{name}.json"


def write_manifest(models_dir: Path, manifest: Manifest) -> None:
    """Write the record atomically (a temporary file renamed over the old one)."""
    path = manifest_path(models_dir, manifest.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(manifest.to_json() + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_manifest(models_dir: Path, name: str) -> Manifest | None:
    """The install record, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(manifest_path(models_dir, name).read_text(encoding="utf-8"))
        return Manifest(
            name=data["name"],
            kind=data["kind"],
            origin=data.get("origin", ""),
            catalogue=bool(data.get("catalogue")),
            files={k: (int(v["size"]), str(v["sha256"])) for k, v in data["files"].items()},
            archive_sha256=data.get("archive_sha256", ""),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
