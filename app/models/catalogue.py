"""The catalogue of known models: a TOML file shipped in this package (or given with --catalogue),
loaded into frozen dataclasses and checked as a whole, so a typo fails on load, not mid-pull.

An entry is a Vosk or faster-whisper model (one folder under the models folder) or a Piper voice
(two files in the voices folder), fetched either as one archive or as a list of files. Every
file carries its size and SHA-256; an entry whose publisher gives no SHA-256 says so with
`unverified = true` (its `sha256` is then "") and is only installed on request.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

from app.models.errors import CatalogueError

KINDS = ("vosk", "whisper", "piper")
ARCHIVE_FORMATS = ("zip", "tar.gz")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
RESERVED_NAMES = ("piper",)  # the voices folder lives beside the model folders
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MD5 = re.compile(r"[0-9a-f]{32}")
_ENTRY_KEYS = {
    "name",
    "kind",
    "description",
    "language",
    "licence",
    "licence_url",
    "unverified",
    "archive",
    "files",
}
_ARCHIVE_KEYS = {"url", "size", "sha256", "md5", "format", "folder"}
_FILE_KEYS = {"url", "size", "sha256", "md5", "path"}


@dataclass(frozen=True, slots=True)
class Archive:
    """One archive holding the model: `folder` is the model's folder inside it ("" its root)."""

    url: str
    size: int
    sha256: str  # "" only in an entry marked unverified
    format: str
    folder: str = ""
    md5: str = ""


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a model: `path` is where it goes, relative to the model's folder (for a
    Piper voice, to the voices folder)."""

    url: str
    size: int
    sha256: str  # "" only in an entry marked unverified
    path: str
    md5: str = ""


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    name: str
    kind: str
    description: str
    language: str
    licence: str
    archive: Archive | None = None
    files: tuple[RemoteFile, ...] = ()
    licence_url: str = ""
    unverified: bool = False

    @property
    def size(self) -> int:
        """Bytes to download."""
        if self.archive is not None:
            return self.archive.size
        return sum(remote.size for remote in self.files)

    @property
    def downloads(self) -> tuple[Archive | RemoteFile, ...]:
        return (self.archive,) if self.archive is not None else self.files


@dataclass(frozen=True, slots=True)
class Catalogue:
    entries: Mapping[str, CatalogueEntry]
    mirror_prefixes: tuple[str, ...] = ()
    source: str = ""

    def get(self, name: str) -> CatalogueEntry | None:
        return self.entries.get(name)

    def of_kind(self, kind: str) -> list[CatalogueEntry]:
        return [entry for entry in self.entries.values() if entry.kind == kind]

    def close_names(self, name: str, kind: str | None = None, limit: int = 3) -> list[str]:
        """Catalogue names like `name` (of `kind` when given), the likeliest first."""
        names = [e.name for e in self.entries.values() if kind is None or e.kind == kind]
        return close_names(name, names, limit)

    def mirrored(self, url: str, mirror: str | None) -> str:
        """`url` fetched from `mirror` instead: the documented prefix replaced by it."""
        if not mirror:
            return url
        prefixes = sorted((p for p in self.mirror_prefixes if url.startswith(p)), key=len)
        if not prefixes:
            raise CatalogueError(
                f"{self.source}: {url} starts with none of the catalogue's mirror_prefixes, so "
                "--mirror cannot be applied to it"
            )
        return mirror.rstrip("/") + "/" + url[len(prefixes[-1]) :]


def close_names(name: str, names: Iterable[str], limit: int = 3) -> list[str]:
    """Names containing `name` (or contained in it) first, then those spelled alike."""
    pool = list(dict.fromkeys(names))
    wanted = name.lower()
    found = [n for n in pool if wanted and (wanted in n.lower() or n.lower() in wanted)]
    alike = difflib.get_close_matches(name, pool, n=limit, cutoff=0.45)
    return list(dict.fromkeys([*found, *alike]))[:limit]


def default_catalogue_text() -> str:
    return files("app.models").joinpath("catalogue.toml").read_text(encoding="utf-8")


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The shipped catalogue, or the TOML file at `path` (same schema)."""
    if path is None:
        return parse_catalogue(default_catalogue_text(), "the built-in catalogue")
    source = Path(path).expanduser()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"cannot read catalogue {source}: {exc.strerror or exc}") from None
    return parse_catalogue(text, str(source))


def parse_catalogue(text: str, source: str) -> Catalogue:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(data) - {"mirror_prefixes", "model"}
    if unknown:
        raise CatalogueError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    prefixes = data.get("mirror_prefixes", [])
    if not isinstance(prefixes, list) or not all(
        isinstance(p, str) and p.startswith(("http://", "https://")) for p in prefixes
    ):
        raise CatalogueError(f"{source}: mirror_prefixes must be a list of http(s) URLs")
    models = data.get("model", [])
    if not isinstance(models, list):
        raise CatalogueError(f"{source}: `model` must be an array of tables ([[model]])")
    entries: dict[str, CatalogueEntry] = {}
    for index, raw in enumerate(models, 1):
        entry = _entry(raw, f"{source}: model #{index}")
        if entry.name in entries:
            raise CatalogueError(f"{source}: model {entry.name!r} is listed twice")
        for remote in entry.downloads:
            if prefixes and not remote.url.startswith(tuple(prefixes)):
                raise CatalogueError(
                    f"{source}: model {entry.name!r}: {remote.url} starts with none of "
                    "mirror_prefixes"
                )
        entries[entry.name] = entry
    return Catalogue(entries, tuple(prefixes), source)


def _entry(raw: Any, where: str) -> CatalogueEntry:
    if not isinstance(raw, dict):
        raise CatalogueError(f"{where}: not a table")
    name = raw.get("name")
    if isinstance(name, str):
        where = f"{where.rsplit(': ', 1)[0]}: model {name!r}"
    _known_keys(raw, _ENTRY_KEYS, where)
    name = _text(raw, "name", where)
    if not NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise CatalogueError(f"{where}: name must be letters, digits and _.+- (not 'piper')")
    kind = _text(raw, "kind", where)
    if kind not in KINDS:
        raise CatalogueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unverified = raw.get("unverified", False)
    if not isinstance(unverified, bool):
        raise CatalogueError(f"{where}: unverified must be true or false")
    has_archive, has_files = "archive" in raw, "files" in raw
    if has_archive == has_files:
        raise CatalogueError(f"{where}: give either [model.archive] or [[model.files]]")
    archive = _archive(raw["archive"], f"{where}: archive") if has_archive else None
    remote_files = _files(raw["files"], f"{where}: files") if has_files else ()
    entry = CatalogueEntry(
        name=name,
        kind=kind,
        description=_text(raw, "description", where),
        language=_text(raw, "language", where),
        licence=_text(raw, "licence", where),
        archive=archive,
        files=remote_files,
        licence_url=_text(raw, "licence_url", where, required=False),
        unverified=unverified,
    )
    missing_sha = [r.url for r in entry.downloads if not r.sha256]
    if missing_sha and not unverified:
        raise CatalogueError(
            f"{where}: no sha256 for {', '.join(missing_sha)}: give the published SHA-256, or "
            "mark the model `unverified = true`"
        )
    if unverified and not missing_sha:
        raise CatalogueError(f"{where}: marked unverified but every file has a sha256")
    if kind == "piper":
        wanted = {f"{name}.onnx", f"{name}.onnx.json"}
        if archive is not None or {r.path for r in remote_files} != wanted:
            raise CatalogueError(
                f"{where}: a Piper voice is the two files {name}.onnx and {name}.onnx.json"
            )
    return entry


def _archive(raw: Any, where: str) -> Archive:
    if not isinstance(raw, dict):
        raise CatalogueError(f"{where}: not a table")
    _known_keys(raw, _ARCHIVE_KEYS, where)
    fmt = _text(raw, "format", where)
    if fmt not in ARCHIVE_FORMATS:
        raise CatalogueError(f"{where}: format must be one of {', '.join(ARCHIVE_FORMATS)}")
    folder = _text(raw, "folder", where, required=False)
    if folder:
        _relative(folder, f"{where}: folder")
    return Archive(
        url=_url(raw, where),
        size=_size(raw, where),
        sha256=_digest(raw, "sha256", _SHA256, where),
        format=fmt,
        folder=folder,
        md5=_digest(raw, "md5", _MD5, where),
    )


def _files(raw: Any, where: str) -> tuple[RemoteFile, ...]:
    if not isinstance(raw, list) or not raw:
        raise CatalogueError(f"{where}: must be a non-empty array of tables ([[model.files]])")
    result: list[RemoteFile] = []
    for index, item in enumerate(raw, 1):
        here = f"{where} #{index}"
        if not isinstance(item, dict):
            raise CatalogueError(f"{here}: not a table")
        _known_keys(item, _FILE_KEYS, here)
        path = _relative(_text(item, "path", here), f"{here}: path")
        result.append(
            RemoteFile(
                url=_url(item, here),
                size=_size(item, here),
                sha256=_digest(item, "sha256", _SHA256, here),
                path=path,
                md5=_digest(item, "md5", _MD5, here),
            )
        )
    paths = [r.path for r in result]
    if len(set(paths)) != len(paths):
        raise CatalogueError(f"{where}: two files go to the same path")
    return tuple(result)


def _known_keys(raw: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(raw) - known
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")


def _text(raw: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = raw.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise CatalogueError(f"{where}: {key} must be a non-empty string")
    return value


def _url(raw: dict[str, Any], where: str) -> str:
    url = _text(raw, "url", where)
    if not url.startswith(("http://", "https://")):
        raise CatalogueError(f"{where}: url must be http(s)://..., got {url!r}")
    return url


def _size(raw: dict[str, Any], where: str) -> int:
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise CatalogueError(f"{where}: size must be the file's size in bytes (> 0)")
    return size


def _digest(raw: dict[str, Any], key: str, pattern: re.Pattern[str], where: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str) or (value and not pattern.fullmatch(value)):
        raise CatalogueError(f'{where}: {key} must be lower-case hex ({pattern.pattern}) or ""')
    return value


def _relative(path: str, where: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in path or not pure.parts:
        raise CatalogueError(f"{where}: must be a relative path inside the model, got {path!r}")
    return str(pure)
