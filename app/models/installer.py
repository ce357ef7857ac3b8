"""Installing models: `pull` from the catalogue's URLs (or a mirror) and `install` from a local
archive, folder or Piper voice, for sites without network.

Both assemble the model in a staging folder inside the models folder, check its layout, write
the install record, and only then move it under its final name with one rename (a voice: its
.onnx.json, then its .onnx, so the voice never shows without its config). An interrupted or
failed install leaves nothing under the final name and removes its staging folder; only a
partial download is kept, for the next pull to continue.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from app.models.catalogue import KINDS, NAME, RESERVED_NAMES, Catalogue, CatalogueEntry
from app.models.errors import ChecksumMismatch, ModelError, UsageError
from app.models.layout import (
    DOWNLOADS_DIR,
    STAGING_DIR,
    Manifest,
    describe,
    digests,
    guess_kind,
    is_installed,
    layout_problems,
    model_location,
    write_manifest,
)
from app.models.unpack import archive_format, extract, single_root
from app.models.verify import check_model

if TYPE_CHECKING:
    import httpx
    from rich.progress import Progress


@dataclass(frozen=True, slots=True)
class Installed:
    """The outcome: where the model is, and a sentence for the operator."""

    name: str
    kind: str
    path: Path
    message: str
    already: bool = False


def pull(
    catalogue: Catalogue,
    name: str,
    models_dir: Path,
    *,
    force: bool = False,
    allow_unverified: bool = False,
    mirror: str | None = None,
    http: httpx.Client | None = None,
    progress: Progress | None = None,
) -> Installed:
    """Download the catalogue model `name` into `models_dir`, checked, placed atomically."""
    entry = catalogue.get(name)
    if entry is None:
        close = catalogue.close_names(name)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(
            f"{name!r} is not in {catalogue.source}{hint}; `switchboard models list` shows it"
        )
    if entry.unverified and not allow_unverified:
        raise UsageError(
            f"{name}: its publisher gives no SHA-256, so the download can be checked by size"
            f"{' and MD5' if any(r.md5 for r in entry.downloads) else ''} only; pass "
            "--allow-unverified to install it anyway"
        )
    location = model_location(models_dir, entry.kind, name)
    if is_installed(models_dir, entry.kind, name) and not force:
        result = check_model(catalogue, models_dir, name)
        if not result.ok:
            raise ModelError(
                f"{name} is installed in {location} but does not verify ({result.detail}); "
                "pass --force to download and install it again"
            )
        return Installed(
            name,
            entry.kind,
            location,
            f"{name} is already installed in {location} and verified ({result.detail}); "
            "--force installs it again",
            already=True,
        )
    models_dir.mkdir(parents=True, exist_ok=True)
    downloads = models_dir / DOWNLOADS_DIR / name
    with contextlib.ExitStack() as stack:
        stack.enter_context(_one_pull_at_a_time(models_dir, name))
        if http is None:
            from app.models.fetch import client

            http = stack.enter_context(client())
        fetched = _download_all(entry, downloads, http, catalogue, mirror, progress)
        parts = [part for part, _ in fetched]
        try:
            result = _install_downloaded(entry, fetched, models_dir, force, catalogue, mirror)
        except ModelError:
            _discard(parts, downloads, models_dir)  # checked bytes that did not install now
            raise  # will not install later either
        _discard(parts, downloads, models_dir)
    return result


@contextlib.contextmanager
def _one_pull_at_a_time(models_dir: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on `name`'s downloads: two pulls appending to one partial file
    would corrupt it. The lock goes with the process, so a killed pull leaves none behind."""
    import fcntl

    lock = models_dir / DOWNLOADS_DIR / f".{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another `switchboard models pull {name}` is running") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            _remove_empty(lock.parent, models_dir)


def _download_all(
    entry: CatalogueEntry,
    downloads: Path,
    http: httpx.Client,
    catalogue: Catalogue,
    mirror: str | None,
    progress: Progress | None,
) -> list[tuple[Path, str]]:
    """Each download's checked file and SHA-256, in the entry's order."""
    from app.models.fetch import check, fetch

    fetched = []
    try:
        for remote in entry.downloads:
            url = catalogue.mirrored(remote.url, mirror)
            leaf = getattr(remote, "path", "") or PurePosixPath(remote.url).name
            part = downloads / (leaf.replace("/", "__") + ".part")
            fetch(http, url, part, remote.size, progress=progress, label=f"{entry.name} {leaf}")
            sha256 = check(part, size=remote.size, sha256=remote.sha256, md5=remote.md5, label=url)
            fetched.append((part, sha256))
    except ChecksumMismatch:
        _remove_empty(downloads, downloads.parent.parent)  # the bad file is already deleted
        raise
    return fetched


def _install_downloaded(
    entry: CatalogueEntry,
    fetched: list[tuple[Path, str]],
    models_dir: Path,
    force: bool,
    catalogue: Catalogue,
    mirror: str | None,
) -> Installed:
    origin = catalogue.mirrored(entry.downloads[0].url, mirror)
    with staging(models_dir, entry.name) as stage:
        if entry.archive is not None:
            unpacked = stage / "unpacked"
            archive, archive_sha256 = fetched[0]
            extract(archive, unpacked, entry.archive.format)
            root = unpacked / entry.archive.folder if entry.archive.folder else unpacked
            if not root.is_dir():
                raise ModelError(
                    f"{entry.name}: the archive has no folder {entry.archive.folder!r} (the "
                    "catalogue's `folder`)"
                )
            return _place(
                models_dir,
                entry.name,
                entry.kind,
                root,
                stage,
                force,
                origin=origin,
                catalogue=True,
                archive_sha256=archive_sha256,
            )
        root = stage / entry.name
        for remote, (part, _) in zip(entry.files, fetched, strict=True):
            target = root / remote.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
        return _place(
            models_dir, entry.name, entry.kind, root, stage, force, origin=origin, catalogue=True
        )


def install_local(
    catalogue: Catalogue,
    source: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    kind: str | None = None,
    force: bool = False,
) -> Installed:
    """Install from a local archive, model folder or Piper `.onnx` (its `.onnx.json` beside it).

    A source whose checksums match a catalogue entry is installed as that entry; anything else
    needs `name` and `kind`.
    """
    source = source.expanduser()
    if not source.exists():
        raise UsageError(f"{source} not found")
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if name is not None and (not NAME.fullmatch(name) or name in RESERVED_NAMES):
        raise UsageError(f"--name {name!r}: letters, digits and _.+- only (and not 'piper')")
    models_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        return _install_folder(catalogue, source, models_dir, name, kind, force)
    if source.name.endswith(".onnx"):
        return _install_voice(catalogue, source, models_dir, name, kind, force)
    fmt = archive_format(source)
    if fmt is None:
        raise UsageError(
            f"{source}: not a .zip or .tar.gz/.tgz archive, a model folder or a Piper .onnx"
        )
    return _install_archive(catalogue, source, fmt, models_dir, name, kind, force)


def _install_archive(
    catalogue: Catalogue,
    source: Path,
    fmt: str,
    models_dir: Path,
    name: str | None,
    kind: str | None,
    force: bool,
) -> Installed:
    sha, md5 = digests(source, md5=True)
    size = source.stat().st_size
    entry = next(
        (
            e
            for e in catalogue.entries.values()
            if e.archive is not None
            and e.archive.size == size
            and (e.archive.sha256 == sha if e.archive.sha256 else e.archive.md5 == md5)
        ),
        None,
    )
    if entry is not None:
        name, kind = _agree(entry, name, kind, source)
    elif not (name and kind):
        raise UsageError(
            f"{source} is not in {catalogue.source} (SHA-256 {sha}): give --name and --kind to "
            "install it as a local model"
        )
    if kind == "piper":
        raise UsageError("install a Piper voice from its .onnx file (its .onnx.json beside it)")
    _refuse_installed(models_dir, kind, name, force)
    with staging(models_dir, name) as stage:
        unpacked = stage / "unpacked"
        extract(source, unpacked, fmt)
        if entry is not None and entry.archive is not None:
            root = unpacked / entry.archive.folder if entry.archive.folder else unpacked
        else:
            root = single_root(unpacked)
        return _place(
            models_dir,
            name,
            kind,
            root,
            stage,
            force,
            origin=str(source.resolve()),
            catalogue=entry is not None,
            archive_sha256=sha,
        )


def _install_folder(
    catalogue: Catalogue,
    source: Path,
    models_dir: Path,
    name: str | None,
    kind: str | None,
    force: bool,
) -> Installed:
    entry = _match_folder(catalogue, source)
    if entry is not None:
        name, kind = _agree(entry, name, kind, source)
    elif not (name and kind):
        guess = guess_kind(source)
        example = f" (it looks like: --name {source.name} --kind {guess})" if guess else ""
        raise UsageError(
            f"{source} does not match a catalogue model by checksum: give --name and --kind to "
            f"install it as a local model{example}"
        )
    if kind == "piper":
        raise UsageError("install a Piper voice from its .onnx file (its .onnx.json beside it)")
    final = model_location(models_dir, kind, name)
    if source.resolve() == final.resolve():
        raise UsageError(f"{source} is already where {name} is installed; verify it instead")
    _refuse_installed(models_dir, kind, name, force)
    with staging(models_dir, name) as stage:
        root = stage / name
        shutil.copytree(source, root)
        return _place(
            models_dir,
            name,
            kind,
            root,
            stage,
            force,
            origin=str(source.resolve()),
            catalogue=entry is not None,
        )


def _match_folder(catalogue: Catalogue, folder: Path) -> CatalogueEntry | None:
    """The catalogue entry (a file list) whose every file is in `folder` with its checksum."""
    for entry in catalogue.entries.values():
        if entry.kind == "piper" or not entry.files or entry.unverified:
            continue
        candidates = [folder / r.path for r in entry.files]
        pairs = list(zip(candidates, entry.files, strict=True))
        if all(p.is_file() and p.stat().st_size == r.size for p, r in pairs) and all(
            digests(p)[0] == r.sha256 for p, r in pairs
        ):
            return entry
    return None


def _install_voice(
    catalogue: Catalogue,
    model: Path,
    models_dir: Path,
    name: str | None,
    kind: str | None,
    force: bool,
) -> Installed:
    if kind not in (None, "piper"):
        raise UsageError(f"{model} is a Piper voice, not a {kind} model")
    config = model.with_name(model.name + ".json")
    if not config.is_file():
        raise UsageError(f"{config} not found: a Piper voice needs its .onnx.json beside it")
    model_sha = digests(model)[0]
    config_sha = digests(config)[0]
    entry = None
    for candidate in catalogue.of_kind("piper"):
        by_path = {r.path: r for r in candidate.files}
        remote = by_path[f"{candidate.name}.onnx"]
        if remote.sha256 == model_sha:
            entry = candidate
            expected = by_path[f"{candidate.name}.onnx.json"].sha256
            if expected and config_sha != expected:
                raise ChecksumMismatch(
                    f"{config}: SHA-256 mismatch for {candidate.name}.onnx.json: expected "
                    f"{expected}, got {config_sha}; nothing was installed"
                )
            break
    if entry is not None:
        voice, _ = _agree(entry, name, "piper", model)
    else:
        voice = name or model.name.removesuffix(".onnx")
        if not NAME.fullmatch(voice):
            raise UsageError(f"{model}: give --name: the file name is not a usable voice name")
    _refuse_installed(models_dir, "piper", voice, force)
    with staging(models_dir, voice) as stage:
        shutil.copyfile(model, stage / f"{voice}.onnx")
        shutil.copyfile(config, stage / f"{voice}.onnx.json")
        return _place(
            models_dir,
            voice,
            "piper",
            stage,
            stage,
            force,
            origin=str(model.resolve()),
            catalogue=entry is not None,
        )


def _refuse_installed(models_dir: Path, kind: str, name: str, force: bool) -> None:
    if not force and is_installed(models_dir, kind, name):
        where = model_location(models_dir, kind, name)
        raise ModelError(f"{name} is already installed in {where}; pass --force to replace it")


def _agree(
    entry: CatalogueEntry, name: str | None, kind: str | None, source: Path
) -> tuple[str, str]:
    if name not in (None, entry.name) or kind not in (None, entry.kind):
        raise UsageError(
            f"{source} is the catalogue's {entry.kind} model {entry.name} (by checksum); leave "
            "out --name/--kind or give those"
        )
    return entry.name, entry.kind


def _place(
    models_dir: Path,
    name: str,
    kind: str,
    root: Path,
    stage: Path,
    force: bool,
    *,
    origin: str,
    catalogue: bool,
    archive_sha256: str = "",
) -> Installed:
    """Check the staged model, record it, and move it under its final name."""
    problems = layout_problems(kind, root, name if kind == "piper" else None)
    if problems:
        raise ModelError(f"{name} is not a usable {kind} model: {'; '.join(problems)}")
    final = model_location(models_dir, kind, name)
    if kind == "piper":
        names = [f"{name}.onnx.json", f"{name}.onnx"]  # config first: see the module doc
        if (final / f"{name}.onnx").exists() and not force:
            raise ModelError(f"voice {name} is already in {final}; pass --force to replace it")
        files = describe(root, names)
    else:
        if final.exists() and not force:
            raise ModelError(f"{final} already exists; pass --force to replace it")
        files = describe(root)
    write_manifest(
        models_dir,
        Manifest(name, kind, origin, catalogue, files, archive_sha256=archive_sha256),
    )
    if kind == "piper":
        final.mkdir(parents=True, exist_ok=True)
        for file_name in names:
            os.replace(root / file_name, final / file_name)
    else:
        _replace_folder(root, final, stage)
    where = final / f"{name}.onnx" if kind == "piper" else final
    return Installed(name, kind, final, f"installed {name} ({kind}) in {where}")


def _replace_folder(staged: Path, final: Path, stage: Path) -> None:
    if not final.exists():
        os.replace(staged, final)
        return
    old = stage / ".replaced"
    os.replace(final, old)
    try:
        os.replace(staged, final)
    except BaseException:
        os.replace(old, final)
        raise
    # the old copy goes with the staging folder


@contextlib.contextmanager
def staging(models_dir: Path, name: str) -> Iterator[Path]:
    """A fresh folder in `<models dir>/.staging`, removed afterwards whatever happens."""
    root = models_dir / STAGING_DIR
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(root, models_dir)


def _discard(parts: list[Path], downloads: Path, models_dir: Path) -> None:
    for part in parts:
        part.unlink(missing_ok=True)
    _remove_empty(downloads, models_dir)


def _remove_empty(folder: Path, stop: Path) -> None:
    """Remove `folder` and its parents up to (not including) `stop` while they are empty."""
    while folder != stop and folder.is_dir():
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
