"""The operations listener: /metrics for Prometheus, /livez and /readyz for probes.

Standard library HTTP on a daemon thread, one short-lived thread per request: a scrape or a
probe every few seconds needs nothing more, and it stays out of the SIP loop's way. It binds
at start so a port in use is a start-up error, not a silent lack of metrics.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from app.ops.health import Liveness, Readiness
from app.ops.metrics import Metrics

log = logging.getLogger(__name__)


class ListenerError(RuntimeError):
    """The listener could not bind (address in use, address not on this host)."""


class OpsHttpServer:
    """Serves /metrics, /livez and /readyz on `bind`:`port` (port 0: any free port)."""

    def __init__(
        self, bind: str, port: int, metrics: Metrics, liveness: Liveness, readiness: Readiness
    ) -> None:
        handler = type("_BoundHandler", (_Handler,), {"ops": self})
        self.metrics, self.liveness, self.readiness = metrics, liveness, readiness
        try:
            self._httpd = _HttpServer((bind, port), handler)
        except OSError as exc:
            raise ListenerError(
                f"cannot listen for metrics and health on {bind}:{port}: {exc.strerror or exc}"
            ) from None
        self.bind = bind
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="ops-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info(
            "metrics and health on http://%s:%d (/metrics /livez /readyz)", self.bind, self.port
        )

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5.0)
            self._thread = None
        self._httpd.server_close()


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    ops: OpsHttpServer
    server_version = "switchboard-ops"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.ops.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/livez":
            self._send_json(*self.ops.liveness.report())
        elif path == "/readyz":
            self._send_json(*self.ops.readiness.report())
        else:
            self._send_json(False, {"error": f"not found: {path}"}, status=404)

    def _send_json(self, ok: bool, body: dict[str, object], status: int | None = None) -> None:
        status = status if status is not None else (200 if ok else 503)
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)
