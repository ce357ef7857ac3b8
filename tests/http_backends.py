"""Real HTTP servers on loopback for tests: a programmable JSON backend and a fake
OpenAI-compatible chat endpoint.

Each runs a stdlib `ThreadingHTTPServer` (HTTP/1.1, keep-alive) on 127.0.0.1 and a free port
in a thread, records every request, and is a context manager that shuts down cleanly, even
with requests left hanging:

    with JsonBackend() as backend:
        backend.route("POST", "/hook", Reply.json({"balance": 12.5}))
        ... WebhookRequest("POST", f"{backend.url}/hook") ...
        assert backend.requests[0].json == {...}
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it. Header names are lower case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body decoded as JSON; None when empty. Raises ValueError when not JSON."""
        return json.loads(self.body) if self.body else None

    @property
    def form(self) -> dict[str, FormPart]:
        """A multipart/form-data body's parts by field name (the stdlib's MIME parser)."""
        kind = self.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise ValueError(f"not a multipart form: {kind!r}")
        message = BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {kind}\r\n\r\n".encode() + self.body
        )
        parts = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            parts[name] = FormPart(
                part.get_filename(), part.get_content_type(), part.get_payload(decode=True)
            )
        return parts


@dataclass(frozen=True, slots=True)
class FormPart:
    """One field of a multipart form: `filename` is None for a plain field."""

    filename: str | None
    content_type: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode()


@dataclass(frozen=True, slots=True)
class Reply:
    """What a route answers. Build with the class methods: `Reply.json(...)`, `Reply.hang()`."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    never_answer: bool = False
    chunks: tuple[bytes, ...] | None = None
    hold: threading.Event | None = None
    cut: bool = False
    cut_after: int | None = None
    """Announce the whole `body`'s length, send only this many bytes, drop the connection."""

    @classmethod
    def json(
        cls,
        data: Any,
        status: int = 200,
        *,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> Reply:
        """`data` as a JSON body."""
        return cls(
            status,
            json.dumps(data).encode(),
            {"Content-Type": "application/json", **(headers or {})},
            delay_s,
        )

    @classmethod
    def text(
        cls, body: str | bytes, status: int = 200, *, content_type: str = "text/plain"
    ) -> Reply:
        """A raw body, sent as is."""
        raw = body.encode() if isinstance(body, str) else body
        return cls(status, raw, {"Content-Type": content_type})

    @classmethod
    def empty(cls, status: int = 204) -> Reply:
        return cls(status)

    @classmethod
    def error(cls, status: int = 500, data: Any = None) -> Reply:
        """An error status with a JSON body (`{"error": "HTTP <status>"}` by default)."""
        return cls.json(data if data is not None else {"error": f"HTTP {status}"}, status)

    @classmethod
    def malformed(cls, status: int = 200) -> Reply:
        """Claims to be JSON, is not."""
        return cls(status, b'{"balance": 12.5,', {"Content-Type": "application/json"})

    @classmethod
    def slow(cls, delay_s: float, data: Any = None, status: int = 200) -> Reply:
        """`data` as JSON after `delay_s` (cut short when the backend closes)."""
        return cls.json(data if data is not None else {}, status, delay_s=delay_s)

    @classmethod
    def stream(
        cls,
        chunks: Sequence[bytes],
        status: int = 200,
        *,
        content_type: str = "application/octet-stream",
        hold: threading.Event | None = None,
        cut: bool = False,
    ) -> Reply:
        """`chunks` in chunked transfer encoding, each written as soon as the one before.

        `hold`: after the first chunk, wait until it is set (or the backend closes), so a
        test can see the first piece arrive alone. `cut`: close the connection instead of
        ending the body properly (a stream that breaks).
        """
        return cls(
            status, b"", {"Content-Type": content_type}, chunks=tuple(chunks), hold=hold, cut=cut
        )

    @classmethod
    def hang(cls) -> Reply:
        """Read the request, then never answer (until the backend closes)."""
        return cls(never_answer=True)


Handler = Reply | Sequence[Reply] | Callable[[RecordedRequest], Any]
"""A route's answer: one Reply for every request; a sequence played in order (the last one
repeats); or a function of the request returning a Reply, or any other value to send as JSON
with status 200. A function that raises makes a 500."""


def unused_url() -> str:
    """A loopback URL on which nothing listens: connections to it are refused."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def http_date(seconds_from_now: float) -> str:
    """An HTTP-date `seconds_from_now` (as a Retry-After header may carry one)."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


class JsonBackend:
    """A programmable HTTP backend: routes (method, path) to handlers, records requests.

    Requests without a route get 404 with a JSON error. Paths are matched without the query
    string. `.url` is "http://127.0.0.1:<port>".
    """

    def __init__(self, routes: Mapping[tuple[str, str], Handler] | None = None) -> None:
        self._lock = threading.Condition()
        self._routes: dict[tuple[str, str], Handler] = {}
        self._played: dict[tuple[str, str], int] = {}
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for (method, path), handler in (routes or {}).items():
            self.route(method, path, handler)

    # -- set up and tear down

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._server.backend = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving: hanging and delayed replies end, open connections are cut."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
            handlers = list(self._handlers)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + 5
        for thread in handlers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

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
            raise RuntimeError("the backend is not running (use it in a `with` block)")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_url(self) -> str:
        """The server's root, "http://127.0.0.1:<port>" (subclasses may move `url`)."""
        return f"http://127.0.0.1:{self.port}"

    # -- programming it

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer `method` `path` with `handler` (replacing any earlier one, restarting a
        sequence)."""
        key = (method.upper(), path)
        with self._lock:
            self._routes[key] = handler
            self._played[key] = 0

    # -- what it saw

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.path == path and (method is None or r.method == method.upper())
        ]

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[RecordedRequest]:
        """Block until at least `count` requests arrived; AssertionError after `timeout_s`."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise AssertionError(
                    f"{len(self._requests)} requests arrived in {timeout_s} s, expected {count}"
                )
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- serving (called on the server's handler threads)

    def _answer(self, request: RecordedRequest) -> Reply:
        key = (request.method, request.path)
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            handler = self._routes.get(key)
            if isinstance(handler, Sequence) and not isinstance(handler, Reply):
                played = self._played[key]
                self._played[key] = played + 1
                return handler[min(played, len(handler) - 1)]
        if handler is None:
            return Reply.json({"error": f"no route for {request.method} {request.path}"}, 404)
        if isinstance(handler, Reply):
            return handler
        try:
            result = handler(request)
        except Exception as exc:
            log.exception("handler for %s %s failed", request.method, request.path)
            return Reply.json({"error": f"handler failed: {exc!r}"}, 500)
        return result if isinstance(result, Reply) else Reply.json(result)

    def _track(self, sock: socket.socket, thread: threading.Thread, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(sock)
                self._handlers.add(thread)
            else:
                self._connections.discard(sock)
                self._handlers.discard(thread)


class FakeChatServer(JsonBackend):
    """An OpenAI-compatible chat endpoint: POST /v1/chat/completions (and GET /v1/models).

    `.url` is the API base, "http://127.0.0.1:<port>/v1", as `ChatRequest.url` wants it. The
    reply is `reply(messages)` (messages as the JSON list received); by default it echoes the
    last user message. `fail(...)` makes it misbehave; `api_key` makes it demand that key.
    """

    def __init__(
        self,
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
        *,
        api_key: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.reply = reply or echo_reply
        self.api_key = api_key
        self.delay_s = delay_s
        self.finish_reason = "stop"
        self._failure: str | None = None
        self._failure_message = ""
        self.route("POST", "/v1/chat/completions", self._complete)
        self.route("GET", "/v1/models", lambda _: {"object": "list", "data": [_MODEL_CARD]})

    @property
    def url(self) -> str:
        return f"{self.root_url}/v1"

    def fail(self, mode: str | None, message: str = "The server had an error.") -> None:
        """Misbehave from now on: "500" (OpenAI-style error JSON with `message`), "hang",
        "malformed" (a body that is not JSON), "no_choices" (JSON without choices), or None
        to answer properly again."""
        if mode not in (None, "500", "hang", "malformed", "no_choices"):
            raise ValueError(f"unknown failure mode {mode!r}")
        self._failure, self._failure_message = mode, message

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests so far."""
        return [r.json for r in self.requests_to("/v1/chat/completions", "POST")]

    @property
    def last_messages(self) -> list[dict[str, Any]]:
        requests = self.chat_requests
        if not requests:
            raise AssertionError("no chat completion request arrived")
        return requests[-1]["messages"]

    def _complete(self, request: RecordedRequest) -> Reply:
        if self.api_key is not None and request.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            return _openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        failure = self._failure
        if failure == "500":
            return _openai_error(500, self._failure_message, None, kind="server_error")
        if failure == "hang":
            return Reply.hang()
        if failure == "malformed":
            return Reply.text("<html><body>502 Bad Gateway</body></html>", 200)
        try:
            body = request.json
        except ValueError:
            return _openai_error(400, "We could not parse the JSON body of your request.")
        if failure == "no_choices":
            return Reply.json({"object": "chat.completion", "model": body.get("model")})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_error(400, "'messages' is a required property.")
        text = self.reply(messages)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return Reply.json(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(text.split()),
                    "total_tokens": prompt_tokens + len(text.split()),
                },
            },
            delay_s=self.delay_s,
        )


def echo_reply(messages: list[dict[str, Any]]) -> str:
    """The default fake model: a short canned answer quoting the last user message."""
    said = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"You said: {said}"


_MODEL_CARD = {"id": "fake-model", "object": "model", "owned_by": "tests"}


def _openai_error(
    status: int, message: str, code: str | None = None, *, kind: str = "invalid_request_error"
) -> Reply:
    return Reply.json(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}, status
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    backend: JsonBackend

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a timed-out test client) is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.backend._track(self.connection, threading.current_thread(), add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.backend._track(self.connection, threading.current_thread(), add=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)

    def _serve(self) -> None:
        backend = self.server.backend
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        reply = backend._answer(request)
        if reply.never_answer or (reply.delay_s and backend._closing.wait(reply.delay_s)):
            backend._closing.wait()
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunks is not None:
            self._send_chunks(reply)
            return
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.cut_after is None:
            self.wfile.write(reply.body)
            return
        self.wfile.write(reply.body[: reply.cut_after])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_chunks(self, reply: Reply) -> None:
        closing = self.server.backend._closing
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, chunk in enumerate(reply.chunks or ()):
            if index == 1 and reply.hold is not None:
                while not reply.hold.wait(0.02):
                    if closing.is_set():
                        self.close_connection = True
                        return
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if reply.cut:
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve
