"""A file server on loopback for download tests: byte ranges (or none), dropped connections.

A `JsonBackend` (tests/http_backends.py: the loopback server, request log and clean shutdown)
that answers every GET and HEAD from a dict of files instead of from routes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from tests.http_backends import JsonBackend, RecordedRequest, Reply


class FileServer(JsonBackend):
    """Static files over HTTP/1.1 on loopback, as a model download site serves them.

    `GET /path` answers the whole file (200), or with `Range: bytes=N-` (or `N-M`) the rest of it
    (206 with Content-Range), unless built with `ranges=False`: then every answer is the whole
    file, as from a server without range support. `cut(path, after)` makes the next GET of `path`
    send its headers and only `after` bytes of the body, then drop the connection.
    `.url` is "http://127.0.0.1:<port>"; `.requests` records what arrived.

        with FileServer({"/model.zip": data}) as site:
            ... fetch f"{site.url}/model.zip" ...
            assert site.requests[-1].headers["range"] == "bytes=100-"
    """

    def __init__(self, files: Mapping[str, bytes] | None = None, *, ranges: bool = True) -> None:
        super().__init__()
        self.files: dict[str, bytes] = dict(files or {})
        self.ranges = ranges
        self._cuts: dict[str, int] = {}
        self._cuts_lock = threading.Lock()

    def cut(self, path: str, after: int) -> None:
        """The next GET of `path` stops after `after` body bytes and drops the connection."""
        with self._cuts_lock:
            self._cuts[path] = after

    def _answer(self, request: RecordedRequest) -> Reply:
        super()._answer(request)  # records it (no routes: the reply is ours)
        with self._cuts_lock:
            cut = self._cuts.pop(request.path, None) if request.method == "GET" else None
        data = self.files.get(request.path)
        if request.method not in ("GET", "HEAD") or data is None:
            return Reply(404, b"not found", {"Content-Type": "text/plain"})
        status, headers = 200, {"Accept-Ranges": "bytes" if self.ranges else "none"}
        wanted = request.headers.get("range", "")
        if self.ranges and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start = int(first)
            if start >= len(data):
                return Reply(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start : end + 1]
        headers["Content-Type"] = "application/octet-stream"
        return Reply(status, data, headers, cut_after=cut)
