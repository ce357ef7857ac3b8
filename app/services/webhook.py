"""HTTP requests from a dialplan's `webhook` step to the business backend."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from app import __version__


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One webhook call as the dialplan rendered it.

    `body` is sent as JSON when not None. `retries` more attempts are made after a connection
    error, a timeout or a 5xx answer, waiting `backoff_s`, then twice that, and so on.
    """

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    timeout_s: float = 5.0
    retries: int = 0
    backoff_s: float = 0.5


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    """What came back. `ok` only for a 2xx answer whose body is JSON (or empty).

    `error` says why not in words fit for a call record ("timed out after 2.0 s (3 attempts)",
    "HTTP 500", "response is not JSON: ..."). `data` is the decoded JSON body.
    """

    ok: bool
    status: int | None
    data: Any = None
    error: str | None = None
    attempts: int = 1
    elapsed_s: float = 0.0


log = logging.getLogger(__name__)

USER_AGENT = f"Switchboard/{__version__}"
MAX_RESPONSE_BYTES = 1 << 20


class ResponseTooLarge(Exception):
    """The response body went past the client's `max_response_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response too large (over {limit} bytes)")


class ResponseDeadline(httpx.TimeoutException):
    """The body was still arriving when the request's whole-request deadline passed."""


def make_http_client(*, max_connections: int = 100, verify: bool | str = True) -> httpx.Client:
    """One pooled client for many call threads (httpx's pool is thread-safe).

    Cookies are never stored, so one call's session cannot leak into another's requests.
    Redirects are not followed: a 3xx is reported as what it is.
    """
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(
        headers={"User-Agent": USER_AGENT},
        cookies=no_cookies,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
        verify=verify,
    )


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    content: bytes | None,
    timeout_s: float,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> tuple[int, bytes]:
    """One HTTP exchange bounded by `timeout_s` in all: returns (status, body).

    Connecting and each wait for data are bounded by `timeout_s`, and the body is read in
    chunks with the deadline checked after each one, so a server that accepts and never
    answers fails after `timeout_s` and one that trickles bytes at most one read later.
    Raises httpx.HTTPError (httpx.TimeoutException for every kind of timeout),
    ResponseTooLarge, or httpx.InvalidURL.
    """
    deadline = time.monotonic() + timeout_s
    with client.stream(
        method, url, headers=headers, content=content, timeout=httpx.Timeout(timeout_s)
    ) as response:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(max_bytes)
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise ResponseDeadline("response body still arriving at the deadline")
        return response.status_code, b"".join(chunks)


def describe_failure(exc: Exception, timeout_s: float) -> str:
    """A short, secret-free description of what `send` raised, for a call record."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {_seconds(timeout_s)} s"
    if isinstance(exc, ResponseTooLarge):
        return str(exc)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return "invalid URL"
    if isinstance(exc, httpx.ConnectError):
        if _caused_by(exc, ConnectionRefusedError):
            return "connection refused"
        if _caused_by(exc, socket.gaierror):
            return "host not found"
        return f"connection failed: {_short(str(exc))}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"bad response: {_short(str(exc))}"
    if isinstance(exc, httpx.TransportError):
        return f"connection error: {_short(str(exc)) or type(exc).__name__}"
    return f"request failed: {type(exc).__name__}"


def retryable(exc: Exception) -> bool:
    """Whether another attempt might go better: network trouble yes, a bad URL or body no."""
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)


def safe_url(url: str) -> str:
    """`url` for logs: scheme, host, port and path, without credentials or query string."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"


def decode_json(body: bytes) -> tuple[Any, str | None]:
    """(data, None) for a JSON body (None for an empty one), or (None, error)."""
    if not body.strip():
        return None, None
    try:
        return json.loads(body), None
    except ValueError:  # includes UnicodeDecodeError
        text = " ".join(body.decode("utf-8", errors="replace").split())
        return None, f"response is not JSON: {text[:80]}"


class WebhookClient:
    """Makes dialplan webhook requests. Create one per process and share it between calls.

    `call` blocks the calling (call worker) thread; it never raises for network or HTTP
    problems, it reports them in the `WebhookResponse`.
    """

    def __init__(
        self,
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_connections: int = 100,
        verify: bool | str = True,
    ) -> None:
        self._max_bytes = max_response_bytes
        self._http = make_http_client(max_connections=max_connections, verify=verify)

    def close(self) -> None:
        """Close the pooled connections; no `call` may be running or follow."""
        self._http.close()

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self, request: WebhookRequest, cancel: threading.Event | None = None
    ) -> WebhookResponse:
        """Make the request, retrying as `request` says; `cancel` (the caller hung up) stops
        the waits between attempts. A request in flight runs to its own timeout."""
        method = request.method.upper()
        headers = {"Accept": "application/json"}
        content = None
        if request.body is not None:
            content = json.dumps(request.body, ensure_ascii=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        headers = _merge_headers(headers, request.headers)
        where = f"{method} {safe_url(request.url)}"

        started = time.monotonic()
        total = request.retries + 1
        attempts = 0
        status: int | None = None
        error = "cancelled"
        network_failure = False
        while attempts < total:
            if attempts:
                _wait(cancel, request.backoff_s * 2 ** (attempts - 1))
            if cancel is not None and cancel.is_set():
                error = "cancelled"
                network_failure = False
                break
            attempts += 1
            try:
                status, body = send(
                    self._http,
                    method,
                    request.url,
                    headers=headers,
                    content=content,
                    timeout_s=request.timeout_s,
                    max_bytes=self._max_bytes,
                )
            except (httpx.HTTPError, httpx.InvalidURL, ResponseTooLarge) as exc:
                status = None
                error = describe_failure(exc, request.timeout_s)
                network_failure = again = retryable(exc)
            else:
                network_failure = False
                if 200 <= status < 300:
                    data, not_json = decode_json(body)
                    if not_json is None:
                        elapsed = time.monotonic() - started
                        log.debug("webhook %s: HTTP %d in %.2f s", where, status, elapsed)
                        return WebhookResponse(
                            ok=True, status=status, data=data, attempts=attempts, elapsed_s=elapsed
                        )
                    error, again = not_json, False
                else:
                    error = f"HTTP {status}"
                    again = status >= 500
            log.debug("webhook %s: attempt %d of %d: %s", where, attempts, total, error)
            if not again:
                break

        elapsed = time.monotonic() - started
        if network_failure and attempts > 1:
            error = f"{error} ({attempts} attempts)"
        level = logging.INFO if error == "cancelled" else logging.WARNING
        log.log(level, "webhook %s failed after %.2f s: %s", where, elapsed, error)
        return WebhookResponse(
            ok=False, status=status, error=error, attempts=attempts, elapsed_s=elapsed
        )


def extract(data: Any, path: str) -> Any:
    """The value at dotted `path` in decoded JSON: "account.balance", "items.0.name" ("-1" is
    the last item); "" is the whole of `data`. Raises PathNotFound (a KeyError) naming what
    is missing."""
    if path == "":
        return data
    current = data
    parts = path.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the response"
        if part == "":
            raise PathNotFound(f"{path!r}: empty segment in the path")
        if isinstance(current, dict):
            if part not in current:
                raise PathNotFound(f"{path!r}: no field {part!r} in {where}")
            current = current[part]
        elif isinstance(current, list):
            if not _INDEX.fullmatch(part):
                raise PathNotFound(f"{path!r}: {where} is a list, and {part!r} is not an index")
            index = int(part)
            if not -len(current) <= index < len(current):
                raise PathNotFound(f"{path!r}: no item {index} in {where} (it has {len(current)})")
            current = current[index]
        else:
            raise PathNotFound(f"{path!r}: {where} is {_json_kind(current)}, not an object")
    return current


class PathNotFound(KeyError):
    """`extract` found nothing at the path; str() is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0])


def render_value(value: Any) -> str:
    """A JSON value as a dialplan variable: text as is, 12.0 -> "12", true -> "true",
    null -> "", objects and lists as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


_INDEX = re.compile(r"-?[0-9]+")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _merge_headers(defaults: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """`given` over `defaults`, header names compared without case."""
    overridden = {name.lower() for name in given}
    merged = {k: v for k, v in defaults.items() if k.lower() not in overridden}
    merged.update(given)
    return merged


def _wait(cancel: threading.Event | None, seconds: float) -> bool:
    """Sleep `seconds`; False when `cancel` was set meanwhile (or already)."""
    if cancel is None:
        time.sleep(seconds)
        return True
    return not cancel.wait(seconds)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _seconds(value: float) -> str:
    """2 -> "2.0", 0.25 -> "0.25": seconds as a person would write them."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
