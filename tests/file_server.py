"""A file server on loopback for download tests: byte ranges (or none), dropped connections.

A stdlib `ThreadingHTTPServer` (HTTP/1.1, keep-alive) on 127.0.0.1 and a free port, in a thread;
it records every request and shuts down cleanly as a context manager, cutting open connections.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from tests.http_backends import RecordedRequest

log = logging.getLogger(__name__)


class FileServer:
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
        self.files: dict[str, bytes] = dict(files or {})
        self.ranges = ranges
        self._cuts: dict[str, int] = {}
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is None:
            self._server = _FileHttpServer(("127.0.0.1", 0), _FileHandler)
            self._server.site = self
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FileServer:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the file server is not running (use it in a `with` block)")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def cut(self, path: str, after: int) -> None:
        """The next GET of `path` stops after `after` body bytes and drops the connection."""
        with self._lock:
            self._cuts[path] = after

    def _record(self, request: RecordedRequest) -> int | None:
        with self._lock:
            self._requests.append(request)
            return self._cuts.pop(request.path, None) if request.method == "GET" else None

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(sock)


class _FileHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    site: FileServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FileHttpServer

    def setup(self) -> None:
        super().setup()
        self.server.site._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.site._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        site = self.server.site
        url = urlsplit(self.path)
        cut = site._record(
            RecordedRequest(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query, keep_blank_values=True),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=b"",
            )
        )
        data = site.files.get(url.path)
        if data is None:
            self._send(404, b"not found", {"Content-Type": "text/plain"}, body)
            return
        start, status, headers = 0, 200, {"Accept-Ranges": "bytes" if site.ranges else "none"}
        wanted = self.headers.get("Range", "")
        if site.ranges and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start = int(first)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                self._send(416, b"", headers, body)
                return
            status, data = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(site.files[url.path])}"
        headers["Content-Type"] = "application/octet-stream"
        if cut is None:
            self._send(status, data, headers, body)
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:cut])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, data: bytes, headers: Mapping[str, str], body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
