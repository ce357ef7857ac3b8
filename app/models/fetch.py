"""Resumable HTTP downloads, checked against the catalogue's size and checksums.

A download streams into `<file>.part`. When a `.part` is already there, the next attempt asks for
the rest with `Range: bytes=<have>-`; a 206 answer is appended, a 200 (a server without range
support) starts the file again, a 416 drops the partial file and starts again. A dropped
connection leaves the `.part` for the next pull. Only a complete file is hashed; a size or hash
that differs from the catalogue deletes it, since resuming bad bytes cannot fix them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from app import __version__
from app.models.errors import ChecksumMismatch, DownloadError
from app.models.layout import digests

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def client(timeout_s: float = 30.0) -> httpx.Client:
    """An HTTP client for model downloads: redirects followed (Hugging Face answers with one to
    its CDN), proxies from the environment, a timeout per network operation."""
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout_s, connect=15.0),
        headers={"User-Agent": f"switchboard/{__version__} (models)"},
    )


def fetch(
    http: httpx.Client,
    url: str,
    part: Path,
    size: int,
    *,
    progress: Progress | None = None,
    label: str = "",
) -> None:
    """Download `url` into `part` until it holds `size` bytes, continuing what is there.

    Raises DownloadError (the `.part` is kept for the next attempt) or ChecksumMismatch when the
    server sends more than `size` bytes (the `.part` is deleted).
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    task = progress.add_task(label or part.name, total=size, completed=have) if progress else None
    _get(http, url, part, size, have, progress, task, retried=False)


def _get(
    http: httpx.Client,
    url: str,
    part: Path,
    size: int,
    have: int,
    progress: Progress | None,
    task: TaskID | None,
    *,
    retried: bool,
) -> None:
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with http.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if have and status == 206:
                start = _range_start(response.headers.get("content-range", ""))
                if start != have:
                    raise DownloadError(
                        f"{url}: asked for bytes from {have}, the server sent them from {start}"
                    )
                mode = "ab"
            elif status == 200:
                mode, have = "wb", 0  # a full answer, whatever was asked: start again
            elif have and status == 416 and not retried:
                part.unlink(missing_ok=True)
                mode = ""
            else:
                raise DownloadError(f"{url}: HTTP {status} {response.reason_phrase}".rstrip())
            if mode:
                if progress is not None and task is not None:
                    progress.update(task, completed=have)
                have = _write(response, part, mode, size, have, progress, task, url)
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"download of {url} stopped at {_written(part)} of {size} bytes "
            f"({exc or type(exc).__name__}); run the same command again to continue it"
        ) from None
    if not mode:  # 416: the partial file was not a prefix the server recognised
        _get(http, url, part, size, 0, progress, task, retried=True)
        return
    if have < size:
        raise DownloadError(
            f"download of {url} ended at {have} of {size} bytes; run the same command again to "
            "continue it"
        )


def _write(
    response: httpx.Response,
    part: Path,
    mode: str,
    size: int,
    have: int,
    progress: Progress | None,
    task: TaskID | None,
    url: str,
) -> int:
    with part.open(mode) as out:
        for chunk in response.iter_bytes():  # as they arrive: a cut keeps what came
            have += len(chunk)
            if have > size:
                out.close()
                part.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"{url}: size mismatch: expected {size} bytes, the server sent more; the "
                    "download was deleted"
                )
            out.write(chunk)
            if progress is not None and task is not None:
                progress.update(task, advance=len(chunk))
    return have


def _range_start(header: str) -> int | None:
    match = _CONTENT_RANGE.match(header.strip())
    return int(match.group(1)) if match else None


def _written(part: Path) -> int:
    try:
        return part.stat().st_size
    except OSError:
        return 0


def check(part: Path, *, size: int, sha256: str, md5: str, label: str) -> str:
    """The complete download's SHA-256 after checking it against the catalogue; a file that
    differs is deleted and ChecksumMismatch names what was expected and what came."""
    got_size = part.stat().st_size
    if got_size != size:
        part.unlink()
        raise ChecksumMismatch(
            f"{label}: size mismatch: expected {size} bytes, got {got_size}; the download was "
            "deleted"
        )
    got_sha, got_md5 = digests(part, md5=bool(md5))
    for algorithm, expected, got in (("SHA-256", sha256, got_sha), ("MD5", md5, got_md5)):
        if expected and got != expected:
            part.unlink()
            raise ChecksumMismatch(
                f"{label}: {algorithm} mismatch: expected {expected}, got {got}; the download "
                "was deleted and nothing was installed (a changed upstream file or a bad mirror)"
            )
    return got_sha
