"""Safe extraction of model archives (.zip, .tar.gz/.tgz).

Every entry is checked before anything is written: absolute names, `..` components, links
whose target leaves the archive (or, in a zip, any link: zipfile would write it as a plain file),
devices and fifos are refused with the entry named. Tar archives then extract with the standard
library's "data" filter as a second line of defence.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from app.models.errors import UnsafeArchive

_DRIVE = re.compile(r"^[A-Za-z]:")


def archive_format(path: Path) -> str | None:
    """The archive format from the file name ("zip", "tar.gz"); None for anything else."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    return None


def extract(archive: Path, dest: Path, fmt: str) -> None:
    """Unpack `archive` into the folder `dest` (created), refusing unsafe entries."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "zip":
            _extract_zip(archive, dest)
        elif fmt == "tar.gz":
            _extract_tar(archive, dest)
        else:
            raise ValueError(f"unknown archive format {fmt!r}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise UnsafeArchive(f"{archive} is not a readable {fmt} archive: {exc}") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            _check_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchive(
                    f"{archive}: {info.filename} is a symbolic link (refused in model archives)"
                )
        bundle.extractall(dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as bundle:
        for member in bundle.getmembers():
            _check_name(archive, member.name)
            if member.issym() or member.islnk():
                target = PurePosixPath(member.linkname)
                # A symlink's target is relative to its own folder; a hard link's to the root.
                joined = PurePosixPath(member.name).parent / target if member.issym() else target
                if target.is_absolute() or _escapes(joined):
                    raise UnsafeArchive(
                        f"{archive}: link {member.name} -> {member.linkname} points outside the "
                        "archive"
                    )
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchive(f"{archive}: {member.name} is not a file or folder")
        bundle.extractall(dest, filter="data")


def _check_name(archive: Path, name: str) -> None:
    text = name.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise UnsafeArchive(f"{archive}: entry {name!r} has an absolute path")
    if ".." in PurePosixPath(text).parts:
        raise UnsafeArchive(f"{archive}: entry {name!r} climbs out of the folder with '..'")


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (".", ""):
            depth += 1
    return False


def single_root(folder: Path) -> Path:
    """The one folder an archive unpacked into, or `folder` itself when it holds more."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
