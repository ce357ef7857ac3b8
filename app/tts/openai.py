"""Speech synthesis through an OpenAI-compatible `POST {url}/audio/speech` service.

The request is JSON {model, input, voice, response_format: "pcm", speed}. OpenAI's "pcm" is
raw 24 kHz 16-bit little-endian mono, sent as it is generated, so `synthesize` streams the
body and yields each piece as it arrives (whole samples: an odd byte waits for the next piece)
and playback starts before the prompt is fully rendered. Self-hosted servers (speaches,
Kokoro-FastAPI, openedai-speech, LocalAI) answer the same request, some at another rate
(set `sample_rate`) and some with a WAV file whatever the format asked: a body declared
audio/wav or starting with "RIFF" is read past its header to the data chunk, and must be
16-bit mono at `sample_rate`, since the call path resamples from the engine's one rate.

Timeouts: `timeout_s` bounds connecting, the wait for the answer and each gap in the stream,
not the whole prompt (a long prompt may take longer to speak than to wait for).

Errors (TtsError, the API key never in a message), raised before any audio is yielded: 401/403
says authentication was refused and points at `tts.openai.api_key`; 429 carries
`retry_after_s` from Retry-After; other non-2xx give the status and a body excerpt; a 2xx that
is JSON or text rather than audio is reported with its excerpt; timeouts and connection
failures say so. A stream that breaks after audio was yielded raises TtsError there.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator

import httpx

from app.services.openai_http import (
    Failure,
    auth_headers,
    body_excerpt,
    make_client,
    redact,
    status_failure,
    transport_failure,
)
from app.services.webhook import safe_url
from app.tts.base import TtsEngine, TtsError

log = logging.getLogger(__name__)

ENGINE_NAME = "openai"
CONFIG_KEY = "tts.openai"
OPENAI_PCM_RATE = 24000
# OpenAI's built-in voices (2025); most self-hosted servers map these names too.
OPENAI_VOICES = frozenset(
    [
        "alloy",
        "ash",
        "ballad",
        "cedar",
        "coral",
        "echo",
        "fable",
        "marin",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
    ]
)
_SAMPLE_BYTES = 2
_MAX_WAV_HEADER = 64 * 1024  # past this without a data chunk the body is not a WAV we read
_MAX_ERROR_BODY = 4096
_WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
_NOT_AUDIO_TYPES = ("application/json", "text/")


class OpenAiTtsEngine(TtsEngine):
    """An OpenAI-compatible speech endpoint, shared by every call (thread-safe).

    `url` is the API base ("https://api.openai.com/v1", "http://host:8880/v1"); `model` e.g.
    "tts-1", "gpt-4o-mini-tts" or a self-hosted model; `voice` the default voice; `speed`
    0.25-4.0. `sample_rate` is the rate the server's PCM comes at (24000 for OpenAI).
    `transport` replaces httpx's network transport (tests, proxies).
    """

    name = ENGINE_NAME

    def __init__(
        self,
        url: str,
        model: str,
        voice: str = "alloy",
        api_key: str | None = None,
        speed: float = 1.0,
        timeout_s: float = 10.0,
        sample_rate: int = OPENAI_PCM_RATE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.strip() or not model.strip() or not voice.strip():
            raise TtsError("the OpenAI speech engine needs a url, a model and a voice")
        if not timeout_s > 0 or not sample_rate > 0:
            raise TtsError(
                f"tts.openai timeout and sample rate must be positive, got {timeout_s}, "
                f"{sample_rate}"
            )
        self.url = f"{url.strip().rstrip('/')}/audio/speech"
        self.model = model
        self.voice = voice
        self.speed = speed
        self.timeout_s = timeout_s
        self.sample_rate = sample_rate
        self._api_key = api_key or None
        self._where = safe_url(self.url)
        self._client = make_client(transport)

    def __repr__(self) -> str:  # never the key
        return f"OpenAiTtsEngine({self._where!r}, {self.model!r}, voice={self.voice!r})"

    def has_voice(self, voice: str) -> bool:
        """The engine's own voice or one of OpenAI's built-in names (which self-hosted servers
        mostly map too). A server's other voices cannot be listed through this API, and an
        unknown voice is a 400 that would count against the engine in a fallback chain, so a
        dialplan's voice is only claimed when it is sure to exist."""
        return voice == self.voice or voice in OPENAI_VOICES

    def close(self) -> None:
        """Close the connections; no `synthesize` may be running or follow."""
        self._client.close()

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        """Yield `text` spoken in `voice` (the engine's when None) as 16-bit PCM pieces at
        `sample_rate`, as the server sends them. Nothing, and no request, for blank text."""
        if not text.strip():
            return
        payload = {
            "model": self.model,
            "input": text,
            "voice": voice or self.voice,
            "response_format": "pcm",
            "speed": self.speed,
        }
        if self._client.is_closed:
            raise self._error(Failure("the engine is closed"))
        headers = auth_headers(self._api_key)
        started = time.monotonic()
        size = 0
        try:
            with self._client.stream(
                "POST",
                self.url,
                headers=headers,
                json=payload,
                timeout=httpx.Timeout(self.timeout_s),
            ) as response:
                self._check(response)
                for pcm in _samples(response, self.sample_rate):
                    size += len(pcm)
                    yield pcm
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._error(_stream_failure(exc, self.timeout_s, size)) from exc
        except AudioFormatError as exc:
            raise self._error(Failure(str(exc))) from None
        if not size:
            raise self._error(Failure("answered no audio"))
        log.debug(
            "openai tts %s: %d chars -> %.2f s of audio in %.2f s",
            self._where,
            len(text),
            size / (self.sample_rate * _SAMPLE_BYTES),
            time.monotonic() - started,
        )

    def _check(self, response: httpx.Response) -> None:
        """TtsError for an answer that is not audio, before anything is yielded."""
        status = response.status_code
        if not 200 <= status < 300:
            body = _read_some(response)
            raise self._error(status_failure(status, response.headers, body, CONFIG_KEY))
        kind = response.headers.get("content-type", "").lower()
        if kind.startswith(_NOT_AUDIO_TYPES):
            excerpt = body_excerpt(_read_some(response))
            raise self._error(Failure(f"answered {kind.split(';')[0]}, not audio: {excerpt}"))

    def _error(self, failure: Failure) -> TtsError:
        message = redact(f"OpenAI speech {self._where}: {failure.message}", self._api_key)
        return TtsError(message, retry_after_s=failure.retry_after_s)


class AudioFormatError(ValueError):
    """The body is audio we cannot play as is (a WAV of another rate or layout)."""


class AudioBody:
    """Turns a speech response's body, piece by piece, into whole 16-bit samples.

    Raw PCM passes through; a WAV (declared, or sniffed by its "RIFF" start) is read past its
    header, whose data size is ignored (streaming servers write 0 or 0xFFFFFFFF there).
    """

    def __init__(self, sample_rate: int, declared_wav: bool = False) -> None:
        self.sample_rate = sample_rate
        self._declared_wav = declared_wav
        self._head = bytearray()  # the body until the audio starts
        self._started = False
        self._carry = b""  # an odd byte left over from the previous piece

    def feed(self, chunk: bytes) -> bytes:
        """The whole samples this piece completes (may be empty)."""
        if not self._started:
            self._head += chunk
            chunk = self._start(final=False)
        data = self._carry + chunk
        cut = len(data) - len(data) % _SAMPLE_BYTES
        self._carry = data[cut:]
        return data[:cut]

    def end(self) -> bytes:
        """The body is complete: the samples still held back (a body shorter than a WAV
        header's first field). AudioFormatError if it stopped inside a WAV header."""
        pcm = b""
        if not self._started:
            head = self._start(final=True)
            pcm = head[: len(head) - len(head) % _SAMPLE_BYTES]
            self._carry = head[len(pcm) :]
        if self._carry:
            log.warning("speech audio ended in the middle of a sample: last byte dropped")
        return pcm

    def _start(self, *, final: bool) -> bytes:
        """The audio in the head once its start is known, else b"" (need more of the body)."""
        head = bytes(self._head)
        if len(head) < 4 and b"RIFF".startswith(head) and not final:
            return b""  # could still be a WAV
        if not head.startswith(b"RIFF"):
            if self._declared_wav and head:
                raise AudioFormatError("answered audio/wav, but the body is not a RIFF file")
            self._started = True
            return head
        offset = wav_data_offset(head, self.sample_rate)
        if offset is None:
            if final or len(head) > _MAX_WAV_HEADER:
                raise AudioFormatError("the WAV answer ends before its data chunk")
            return b""
        self._started = True
        return head[offset:]


def wav_data_offset(head: bytes, sample_rate: int) -> int | None:
    """Where the samples start in a WAV file beginning with `head`; None if `head` is too short
    to tell. AudioFormatError unless it is 16-bit mono PCM at `sample_rate`."""
    if len(head) < 12:
        return None
    if head[8:12] != b"WAVE":
        raise AudioFormatError("the RIFF answer is not a WAVE file")
    pos, fmt_seen = 12, False
    while pos + 8 <= len(head):
        chunk_id, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk_id == b"data":
            if not fmt_seen:
                raise AudioFormatError("the WAV answer has no fmt chunk before its data")
            return pos + 8
        if chunk_id == b"fmt ":
            if pos + 8 + 16 > len(head):
                return None
            _check_wav_format(head[pos + 8 : pos + 24], sample_rate)
            fmt_seen = True
        pos += 8 + size + (size & 1)
    return None


def _check_wav_format(fmt: bytes, sample_rate: int) -> None:
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", fmt)
    if tag not in (1, 0xFFFE) or channels != 1 or bits != 16:
        raise AudioFormatError(
            f"the WAV answer is {bits}-bit, {channels}-channel, format {tag:#x}; "
            "16-bit mono PCM is needed"
        )
    if rate != sample_rate:
        raise AudioFormatError(
            f"the WAV answer is at {rate} Hz, but the engine is set to {sample_rate} Hz "
            "(set tts.openai's sample rate to the server's)"
        )


def _samples(response: httpx.Response, sample_rate: int) -> Iterator[bytes]:
    """The response body's audio as non-empty pieces of whole samples, as they arrive."""
    body = AudioBody(sample_rate, _declared_wav(response))
    for chunk in response.iter_bytes():
        pcm = body.feed(chunk)
        if pcm:
            yield pcm
    pcm = body.end()
    if pcm:
        yield pcm


def _declared_wav(response: httpx.Response) -> bool:
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in _WAV_TYPES


def _read_some(response: httpx.Response) -> bytes:
    """Up to `_MAX_ERROR_BODY` bytes of an error body (enough for its message)."""
    data = bytearray()
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status says enough
    return bytes(data[:_MAX_ERROR_BODY])


def _stream_failure(exc: Exception, timeout_s: float, yielded: int) -> Failure:
    failure = transport_failure(exc, timeout_s)
    if yielded:
        return Failure(f"stream broke after {yielded} bytes of audio: {failure.message}")
    return failure
