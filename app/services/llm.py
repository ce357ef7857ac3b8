"""Chat completions from a dialplan's `llm` step: any OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from app.services.webhook import (
    MAX_RESPONSE_BYTES,
    ResponseTooLarge,
    decode_json,
    describe_failure,
    make_http_client,
    safe_url,
    send,
)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """POST `{url}/chat/completions` (url is the API base, e.g. http://host:8000/v1)."""

    url: str
    model: str
    messages: tuple[ChatMessage, ...]
    timeout_s: float = 8.0
    max_tokens: int = 120
    temperature: float = 0.3
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class ChatReply:
    """`text` is the reply fit to be spoken (trimmed); `error` says why there is none."""

    ok: bool
    text: str = ""
    error: str | None = None
    elapsed_s: float = 0.0


log = logging.getLogger(__name__)

MAX_CHARS = 400


class ChatClient:
    """Asks OpenAI-compatible chat endpoints (OpenAI, vLLM, llama.cpp, Ollama, ...).

    Create one per process and share it between calls. `complete` blocks the calling (call
    worker) thread for at most the request's `timeout_s`, makes one attempt (a caller is
    waiting), and never raises for network, HTTP or format problems.
    """

    def __init__(
        self,
        *,
        max_chars: int = MAX_CHARS,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_connections: int = 100,
        verify: bool | str = True,
    ) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, not {max_chars}")
        self.max_chars = max_chars
        self._max_bytes = max_response_bytes
        self._http = make_http_client(max_connections=max_connections, verify=verify)

    def close(self) -> None:
        """Close the pooled connections; no `complete` may be running or follow."""
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def complete(self, request: ChatRequest, cancel: threading.Event | None = None) -> ChatReply:
        """The model's reply to `request.messages`, made fit to speak.

        `cancel` (the caller hung up) is checked before and after the request; a request in
        flight runs to its timeout.
        """
        started = time.monotonic()
        url = f"{request.url.rstrip('/')}/chat/completions"
        where = f"{safe_url(url)} ({request.model})"
        if cancel is not None and cancel.is_set():
            return self._failed(where, "cancelled", started)
        payload = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": False,
        }
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if request.api_key:
            headers["Authorization"] = f"Bearer {request.api_key}"
        try:
            status, body = send(
                self._http,
                "POST",
                url,
                headers=headers,
                content=json.dumps(payload, ensure_ascii=False).encode(),
                timeout_s=request.timeout_s,
                max_bytes=self._max_bytes,
            )
        except (httpx.HTTPError, httpx.InvalidURL, ResponseTooLarge) as exc:
            return self._failed(where, describe_failure(exc, request.timeout_s), started)
        if cancel is not None and cancel.is_set():
            return self._failed(where, "cancelled", started)

        data, not_json = decode_json(body)
        if not 200 <= status < 300:
            message = _server_message(data)
            error = f"HTTP {status}: {message}" if message else f"HTTP {status}"
        elif not_json is not None:
            error = not_json
        else:
            content, truncated, error = _reply_content(data)
            if error is None:
                text = speakable(content, self.max_chars, truncated=truncated)
                if text:
                    elapsed = time.monotonic() - started
                    log.debug("llm %s: %d chars in %.2f s", where, len(text), elapsed)
                    return ChatReply(ok=True, text=text, elapsed_s=elapsed)
                error = "empty reply"
        if request.api_key:
            error = error.replace(request.api_key, "***")
        return self._failed(where, error, started)

    @staticmethod
    def _failed(where: str, error: str, started: float) -> ChatReply:
        elapsed = time.monotonic() - started
        level = logging.INFO if error == "cancelled" else logging.WARNING
        log.log(level, "llm %s failed after %.2f s: %s", where, elapsed, error)
        return ChatReply(ok=False, error=error, elapsed_s=elapsed)


def _reply_content(data: Any) -> tuple[str, bool, str | None]:
    """(content, cut off by max_tokens, error) from a chat completion."""
    if not isinstance(data, dict):
        return "", False, "malformed response: not a JSON object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        message = _server_message(data)
        if message:
            return "", False, f"server error: {message}"
        return "", False, "malformed response: no choices"
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return "", False, "malformed response: no message in the first choice"
    content = message.get("content")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        content = " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    if content is None or content == "":
        return "", False, "empty reply"
    if not isinstance(content, str):
        return "", False, "malformed response: message content is not text"
    return content, choice.get("finish_reason") == "length", None


def _server_message(data: Any) -> str | None:
    """The message in an error body: OpenAI's {"error": {"message"}}, {"error": "..."},
    FastAPI's {"detail": ...} or {"message": "..."}; cut to a length fit for a call record."""
    if not isinstance(data, dict):
        return None
    found: Any = None
    error = data.get("error")
    if isinstance(error, dict):
        found = error.get("message")
    elif isinstance(error, str):
        found = error
    if found is None:
        detail = data.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            detail = detail[0].get("msg")
        found = detail if detail is not None else data.get("message")
    if not isinstance(found, str) or not found.strip():
        return None
    text = " ".join(found.split())
    return text if len(text) <= 160 else text[:157] + "..."


_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_FENCE = re.compile(r"^\s*(?:```|~~~).*$", re.M)
_RULE = re.compile(r"^\s*([-*_])(?:\s*\1){2,}\s*$", re.M)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_BULLET = re.compile(r"^\s*(?:[-*+•]|>+)\s+")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_CODE = re.compile(r"`+([^`]*)`+")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_ITALIC = re.compile(
    r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])|(?<![\w])_(?=\S)(.+?)(?<=\S)_(?!\w)"
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]”’]*(?=\s|$)")
_PAUSE_PUNCTUATION = ".!?:;,…"


def speakable(text: str, max_chars: int = MAX_CHARS, *, truncated: bool = False) -> str:
    """`text` as one paragraph fit for speech synthesis.

    Drops reasoning (<think>) blocks and markdown (emphasis, headings, bullets, quotes, code
    fences and backticks, links keep their text), ends headings and list items with a full
    stop so they are spoken as separate phrases, collapses lines into one, and cuts the
    result to `max_chars` at the last sentence end that fits (at the last word when no
    sentence ends in time). `truncated` (the model stopped at max_tokens) also drops an
    unfinished last sentence.
    """
    text = _THINK.sub(" ", text)
    text = _FENCE.sub("", text)
    text = _RULE.sub("", text)
    phrases = []
    for raw in text.splitlines():
        line, structural = raw.strip(), False
        for pattern in (_HEADING, _BULLET):
            line, count = pattern.subn("", line)
            structural = structural or count > 0
        line = _LINK.sub(r"\1", line)
        line = _CODE.sub(r"\1", line)
        line = _BOLD.sub(r"\2", line)
        line = _STRIKE.sub(r"\1", line)
        line = _ITALIC.sub(lambda m: m.group(1) or m.group(2), line)
        line = line.replace("**", "").strip()
        if not line:
            continue
        if structural and line[-1] not in _PAUSE_PUNCTUATION:
            line += "."
        phrases.append(line)
    text = " ".join(" ".join(phrases).split())
    if truncated:
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        if ends and ends[-1] < len(text):
            text = text[: ends[-1]]
    return _cap(text, max_chars)


def _cap(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, max_chars + 1) if m.end() <= max_chars]
    if ends:
        return text[: ends[-1]]
    head = text[: max_chars - 1]
    if " " in head:
        head = head[: head.rindex(" ")]
    return head.rstrip(" ,;:-–—") + "."
