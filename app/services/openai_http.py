"""HTTP plumbing shared by the OpenAI-compatible speech engines (`app.asr.openai`,
`app.tts.openai`): one client per engine, the status-to-message mapping, Retry-After, and
keeping the API key out of every message.

The engines raise their own error types (AsrError, TtsError); this module only says what
went wrong, in words fit for a log line and a call record:

- 401/403: authentication was refused; the server's text is left out, since OpenAI echoes a
  masked form of the key there, and the message points at the config key instead;
- 429: rate limited, with the delay from `Retry-After` (seconds or an HTTP-date; OpenAI's
  `retry-after-ms` first) for the fallback chain's circuit breaker;
- any other non-2xx: the status and a short excerpt of the body;
- timeouts and connection failures: as `app.services.webhook.describe_failure` words them.

Every message goes through `redact` with the key before it leaves the engine.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpx

from app.services.webhook import (
    MAX_RESPONSE_BYTES,
    USER_AGENT,
    ResponseDeadline,
    ResponseTooLarge,
    describe_failure,
)

MAX_EXCERPT = 160
_REDACTED = "***"


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong with one request: a message and, for a 429, when to try again."""

    message: str
    retry_after_s: float | None = None


def make_client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """One pooled client per engine, shared by every call thread (httpx's pool is
    thread-safe). Redirects are not followed: a 3xx from an API is a misconfiguration."""
    return httpx.Client(
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        transport=transport,
    )


def auth_headers(api_key: str | None) -> dict[str, str]:
    """`Authorization: Bearer <key>` when there is a key; self-hosted servers often want none."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by "***"."""
    return text.replace(secret, _REDACTED) if secret else text


def post(
    client: httpx.Client,
    url: str,
    *,
    headers: dict[str, str],
    timeout_s: float,
    max_bytes: int = MAX_RESPONSE_BYTES,
    **content: Any,
) -> tuple[int, httpx.Headers, bytes]:
    """One POST bounded by `timeout_s` in all: (status, headers, body).

    Connecting and each wait for data are bounded by `timeout_s`, and the body is read in
    chunks with the deadline checked after each, so a server that trickles bytes fails too.
    `content` is httpx's `files=`, `data=`, `json=` or `content=`. Raises httpx.HTTPError
    (httpx.TimeoutException for every kind of timeout), ResponseTooLarge or httpx.InvalidURL.
    """
    deadline = time.monotonic() + timeout_s
    with client.stream(
        "POST", url, headers=headers, timeout=httpx.Timeout(timeout_s), **content
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
        return response.status_code, response.headers, b"".join(chunks)


def status_failure(status: int, headers: httpx.Headers, body: bytes, config_key: str) -> Failure:
    """A non-2xx answer as a Failure; `config_key` ("asr.openai") is where the key is set."""
    if status in (401, 403):
        return Failure(
            f"authentication was refused (HTTP {status}): check {config_key}.api_key or the "
            f"environment variable named by {config_key}.api_key_env (OPENAI_API_KEY by default)"
        )
    excerpt = body_excerpt(body)
    detail = f": {excerpt}" if excerpt else ""
    if status == 429:
        retry_after = retry_after_s(headers)
        when = f", retry after {retry_after:g} s" if retry_after is not None else ""
        return Failure(f"rate limited (HTTP 429{when}){detail}", retry_after)
    return Failure(f"HTTP {status}{detail}")


def transport_failure(exc: Exception, timeout_s: float) -> Failure:
    """A timeout or connection error as a Failure ("timed out after 1 s", "connection refused")."""
    return Failure(describe_failure(exc, timeout_s))


def retry_after_s(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (delta seconds or an HTTP-date);
    None when absent or unreadable. A date in the past gives 0."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def body_excerpt(body: bytes) -> str:
    """The server's message from an error body: OpenAI's {"error": {"message"}}, {"error": ...},
    {"detail": ...} or {"message": ...}, else the text itself; one line, cut short."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = _json_message(data)
        if found:
            text = found
    text = " ".join(text.split())
    return text if len(text) <= MAX_EXCERPT else text[: MAX_EXCERPT - 3] + "..."


def _json_message(data: dict) -> str | None:
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    for found in (error, data.get("detail"), data.get("message")):
        if isinstance(found, str) and found.strip():
            return found
    return None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if number >= 0 and number != float("inf") else None
