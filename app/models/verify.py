"""Checking installed models: the layout their engine needs, then every file's size and SHA-256
against the catalogue (models fetched as files) or the install record (models unpacked from an
archive, models installed from local files). A model installed by hand, with no record, gets the
layout check only, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.models.catalogue import NAME, Catalogue
from app.models.errors import UsageError
from app.models.layout import (
    PIPER_DIR,
    digests,
    guess_kind,
    installed_names,
    is_installed,
    layout_problems,
    model_location,
    read_manifest,
)


@dataclass(frozen=True, slots=True)
class Check:
    """One model's verdict: `detail` says what was checked, or what is wrong."""

    name: str
    kind: str
    path: Path
    ok: bool
    detail: str
    in_catalogue: bool


def check_model(catalogue: Catalogue, models_dir: Path, name: str) -> Check:
    """Verify the model installed as `name` (its layout, then its files' checksums)."""
    entry = catalogue.get(name)
    manifest = read_manifest(models_dir, name)
    kind = entry.kind if entry else manifest.kind if manifest else None
    if kind is None:
        voices = models_dir / PIPER_DIR
        kind = "piper" if (voices / f"{name}.onnx").is_file() else guess_kind(models_dir / name)
    if kind is None:
        path = models_dir / name
        detail = "not a Vosk or Whisper model folder" if path.is_dir() else "not installed"
        return Check(name, "?", path, False, detail, False)
    path = model_location(models_dir, kind, name)
    in_catalogue = entry is not None
    if not is_installed(models_dir, kind, name):
        return Check(name, kind, path, False, "not installed", in_catalogue)
    problems = layout_problems(kind, path, name if kind == "piper" else None)
    if problems:
        return Check(name, kind, path, False, "; ".join(problems), in_catalogue)

    if entry is not None and entry.files and all(r.sha256 for r in entry.files):
        expected = {r.path: (r.size, r.sha256) for r in entry.files}
        against = "the catalogue"
    elif manifest is not None and manifest.kind == kind:
        expected = manifest.files
        against = "the install record"
        archive = entry.archive if entry is not None else None
        if archive is not None and archive.sha256 and manifest.archive_sha256 != archive.sha256:
            return Check(
                name,
                kind,
                path,
                False,
                "installed from an archive other than the catalogue's",
                in_catalogue,
            )
    else:
        return Check(
            name,
            kind,
            path,
            True,
            "layout ok; no checksums on record (installed by hand)",
            in_catalogue,
        )
    wrong = _compare(path, expected)
    if wrong:
        return Check(name, kind, path, False, "; ".join(wrong), in_catalogue)
    return Check(name, kind, path, True, f"{len(expected)} files match {against}", in_catalogue)


def _compare(root: Path, expected: dict[str, tuple[int, str]]) -> list[str]:
    wrong = []
    for rel, (size, sha256) in sorted(expected.items()):
        file = root / rel
        if not file.is_file():
            wrong.append(f"{rel} missing")
            continue
        got_size = file.stat().st_size
        if got_size != size:
            wrong.append(f"{rel}: {got_size} bytes, expected {size}")
            continue
        got = digests(file)[0]
        if got != sha256:
            wrong.append(f"{rel}: SHA-256 {got}, expected {sha256}")
    return wrong


def verify_installed(
    catalogue: Catalogue, models_dir: Path, name: str | None = None
) -> list[Check]:
    """Checks of `name`, or of every model installed in `models_dir`."""
    if name is not None and not NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a model name")
    names = [name] if name is not None else installed_names(models_dir)
    return [check_model(catalogue, models_dir, each) for each in names]
