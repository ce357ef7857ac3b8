"""Finding the model a setting names, at server start-up: a path to a model folder, or a name
installed in the models folder. A missing model is a ModelMissing whose message names the
model, the folder looked in, and the command that installs it; the server never downloads.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from app.models.catalogue import Catalogue, CatalogueEntry, close_names, load_catalogue
from app.models.errors import CatalogueError, ModelMissing
from app.models.layout import PIPER_DIR, installed_names, layout_problems

_FOLDER_KINDS = ("vosk", "whisper")


def resolve_model(models_dir: Path, kind: str, name_or_path: str) -> Path:
    """The folder of the `kind` ("vosk" or "whisper") model `name_or_path`.

    A value with a path separator, or starting with "~" or ".", is a path to the model folder;
    anything else is a name installed as `<models_dir>/<name>/`. Raises ModelMissing when the
    folder is absent or lacks what the engine loads.
    """
    if kind not in _FOLDER_KINDS:
        raise ValueError(f"resolve_model takes kind 'vosk' or 'whisper', got {kind!r}")
    text = name_or_path.strip()
    if not text:
        raise ModelMissing(f"no {kind} model configured: give a model name or folder")
    if _is_path(text):
        path = Path(text).expanduser().absolute()
        if not path.is_dir():
            raise ModelMissing(
                f"{kind} model folder {path} not found; give an existing folder, or a model "
                f"name installed in {models_dir} (`switchboard models list`)"
            )
        problems = layout_problems(kind, path)
        if problems:
            raise ModelMissing(f"{path} is not a usable {kind} model: {'; '.join(problems)}")
        return path
    path = models_dir / text
    if path.is_dir():
        problems = layout_problems(kind, path)
        if problems:
            raise ModelMissing(
                f"{kind} model {text!r} in {models_dir} is incomplete ({'; '.join(problems)}): "
                f"{_reinstall(text, kind)}"
            )
        return path
    raise ModelMissing(_not_installed(models_dir, kind, text))


def resolve_piper_voices(models_dir: Path, voices: str, voice: str) -> Path:
    """The voices folder holding `<voice>.onnx` and its `.onnx.json`.

    `voices` is the configured folder ("": `<models_dir>/piper`, where `switchboard models`
    installs voices) or one `.onnx` file, whose folder is then the voices folder and whose name
    the voice.
    """
    configured = voices.strip()
    if configured:
        path = Path(configured).expanduser()
        folder, name = (path.parent, path.stem) if path.suffix == ".onnx" else (path, voice)
    else:
        folder, name = models_dir / PIPER_DIR, voice
    if not name.strip():
        raise ModelMissing("no Piper voice configured: set the voice's name")
    if folder.is_dir() and not layout_problems("piper", folder, name):
        return folder
    found = (
        "folder not found"
        if not folder.is_dir()
        else "; ".join(layout_problems("piper", folder, name))
    )
    if configured:
        raise ModelMissing(
            f"Piper voice {name!r} not usable in {folder} ({found}): put {name}.onnx and "
            f"{name}.onnx.json there, or leave the voices setting empty to use "
            f"{models_dir / PIPER_DIR}, where `switchboard models pull {name}` installs voices"
        )
    if (folder / f"{name}.onnx").is_file():
        raise ModelMissing(
            f"Piper voice {name!r} in {folder} is incomplete ({found}): {_reinstall(name, 'piper')}"
        )
    raise ModelMissing(_not_installed(models_dir, "piper", name, folder))


def _is_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith(("~", ".")) or Path(text).is_absolute()


def _catalogue() -> Catalogue | None:
    try:
        return load_catalogue()
    except CatalogueError:
        return None


def _reinstall(name: str, kind: str) -> str:
    catalogue = _catalogue()
    entry = catalogue.get(name) if catalogue else None
    if entry is not None and entry.kind == kind:
        return f"install it again with `switchboard models pull {name} --force`"
    return (
        "install it again with "
        f"`switchboard models install PATH --name {name} --kind {kind} --force`"
    )


def _offline_hint(entry: CatalogueEntry) -> str:
    if entry.archive is not None:
        return (
            f"download {entry.archive.url} on a machine with network, copy it here and run "
            f"`switchboard models install {PurePosixPath(entry.archive.url).name}`"
        )
    base = entry.files[0].url.rsplit("/", 1)[0]
    target = f"{entry.name}.onnx" if entry.kind == "piper" else "FOLDER"
    return (
        f"download its files from {base}/ on a machine with network, copy them here and run "
        f"`switchboard models install {target}`"
    )


def _not_installed(models_dir: Path, kind: str, name: str, folder: Path | None = None) -> str:
    where = folder or models_dir
    what = "Piper voice" if kind == "piper" else f"{kind} model"
    catalogue = _catalogue()
    entry = catalogue.get(name) if catalogue else None
    if entry is not None and entry.kind == kind:
        return (
            f"{what} {name!r} is not installed in {where}: run `switchboard models pull {name}`"
            f" (offline: {_offline_hint(entry)})"
        )
    if entry is not None:
        return (
            f"{name!r} is a {entry.kind} model, not a {kind} one; "
            f"`switchboard models list` shows the {kind} models"
        )
    pool = [e.name for e in catalogue.of_kind(kind)] if catalogue else []
    close = close_names(name, [*pool, *installed_names(models_dir)])
    hint = f" (close: {', '.join(close)})" if close else ""
    return (
        f"{what} {name!r} is not installed in {where} and is not in the catalogue{hint}; "
        f"give the model's path, or install files you have with `switchboard models install "
        f"PATH --name {name} --kind {kind}`"
    )
