"""Speech-to-text through an OpenAI-compatible `POST {url}/audio/transcriptions` service.

Works with OpenAI itself and with self-hosted Whisper servers that copy its API
(faster-whisper-server / speaches, whisper.cpp's server, LocalAI, vLLM). The API is not
streaming: a stream keeps the turn's 8 kHz PCM and `finish()` sends it as one WAV file
(multipart form: `file`, `model`, `language` as ISO-639-1, `prompt`, `response_format`
"verbose_json", `temperature` 0) and waits for the text. `feed()` gives no partials.
`prepare_final()` sends the audio so far on a worker thread while the end-of-turn silence runs;
more audio after it discards that request's answer and `finish()` sends the longer utterance.

Grammars: the API takes none, and only a free-text `prompt` as a hint (Whisper spells words
the way its prompt does), so a turn's options become a prompt as `app.asr.whisper` words them
for a local Whisper: the step's `initial_prompt`, then its `hotwords`, phrase lists, extra
phrases and a JSGF grammar's words as a comma-separated list; the digits grammar sends no
prompt (any prompt made Whisper drop and merge digits, see `app.asr.whisper`), and its answer
is then normalised to spoken digit words ("4-1-7" -> "four one seven") with
`app.asr.whisper.normalise_digits`.

Confidence: exp of the duration-weighted mean of verbose_json's per-segment `avg_logprob`,
as the local Whisper engine computes it. A server that answers only {"text": ...} gives no
score; the result then says 0.0, which this project (like Vosk's engine here and Google's
API) reads as "not given", not as "wrong": nothing gates on it, and a made-up mid value would
be indistinguishable from a real one in the call records.

Errors (AsrError, the API key never in a message): 401/403 says authentication was refused and
points at `asr.openai.api_key`; 429 carries `retry_after_s` from Retry-After; other non-2xx
give the status and a body excerpt; timeouts (`timeout_s` bounds the whole request) and
connection failures say so; a 2xx body that is not JSON with a "text" string is malformed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
import time
import wave
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from app.asr.base import AsrEngine, AsrError, AsrResult, AsrStream, RecognitionOptions
from app.asr.grammars import BUILTIN_GRAMMARS, grammar_words, phrase_words
from app.asr.whisper import normalise_digits
from app.media.audio import CALL_RATE
from app.services.openai_http import (
    Failure,
    auth_headers,
    make_client,
    post,
    redact,
    status_failure,
    transport_failure,
)
from app.services.webhook import ResponseTooLarge, safe_url

log = logging.getLogger(__name__)

ENGINE_NAME = "openai"
CONFIG_KEY = "asr.openai"
TEXT_ONLY_CONFIDENCE = 0.0  # the server gave no score: "not given" (see the module docstring)
_SAMPLE_BYTES = 2
_PREPARE_WORKERS = 8  # requests started early; past that, finish() sends its own
_LANGUAGE = re.compile(r"[a-z]{2,3}")  # ISO-639-1, and Whisper's few 3-letter codes (haw, yue)


@dataclass(frozen=True, slots=True)
class SttHints:
    """How one turn's `RecognitionOptions` are put to the API: a language and a prompt made of
    a leading text (the step's own) and a list of words to spell."""

    language: str
    initial_prompt: str | None = None
    hotwords: tuple[str, ...] = ()
    digits: bool = False
    extra_phrases: tuple[str, ...] = ()

    @property
    def prompt(self) -> str | None:
        listed = ", ".join(dict.fromkeys(self.hotwords))
        return " ".join(part for part in (self.initial_prompt, listed) if part) or None


def iso_language(tag: str) -> str:
    """A dialplan language tag as the API's ISO-639-1 code: "en-US" -> "en". AsrError if bad."""
    code = re.split(r"[-_]", tag.strip(), maxsplit=1)[0].lower()
    if not _LANGUAGE.fullmatch(code):
        raise AsrError(f"{tag!r} is not a language tag the API takes (e.g. en, en-US, de-DE)")
    return code


def hints_for(options: RecognitionOptions) -> SttHints:
    """Map a turn's options to a prompt, as `app.asr.whisper.hints_for` maps them to hotwords
    and an initial prompt: the step's own hotwords come first, its `initial_prompt` replaces
    the built-in one. AsrError for an unknown grammar or more than one constraint."""
    hints = _constraint_hints(options)
    own = _as_written(options.hotwords)
    if not own and not options.initial_prompt:
        return hints
    return dataclasses.replace(
        hints,
        hotwords=(*own, *hints.hotwords),
        initial_prompt=options.initial_prompt or hints.initial_prompt,
    )


def _constraint_hints(options: RecognitionOptions) -> SttHints:
    given = [name for name in ("grammar", "phrases", "jsgf") if getattr(options, name)]
    if len(given) > 1:
        raise AsrError(f"give only one of a grammar, a phrase list or a JSGF text, not {given}")
    language = iso_language(options.language)
    extra = _phrases(options.extra_phrases, "extra phrase")
    if options.grammar:
        if options.grammar not in BUILTIN_GRAMMARS:
            known = ", ".join(sorted(BUILTIN_GRAMMARS))
            raise AsrError(f"unknown grammar {options.grammar!r} (built-in: {known})")
        if options.grammar == "digits":
            return SttHints(language, None, (), True, extra)
        if options.grammar == "yes_no":
            return SttHints(language, hotwords=("yes", "no", *extra))
        return SttHints(language, hotwords=extra)  # number, date, time: numerals, slots read them
    if options.phrases:
        return SttHints(language, hotwords=(*_phrases(options.phrases, "phrase"), *extra))
    if options.jsgf:
        return SttHints(language, hotwords=(*sorted(grammar_words(options.jsgf)), *extra))
    return SttHints(language, hotwords=extra)


def _phrases(phrases: tuple[str, ...], what: str) -> tuple[str, ...]:
    out = []
    for phrase in phrases:
        words = phrase_words(phrase)
        if not words:
            raise AsrError(f"{what} {phrase!r} has no words")
        out.append(" ".join(words))
    return tuple(dict.fromkeys(out))


def _as_written(hotwords: tuple[str, ...]) -> tuple[str, ...]:
    """The step's own hotwords, spelt as given ("Zyxel", "PIN"): the prompt teaches spelling."""
    out = tuple(" ".join(word.split()) for word in hotwords)
    if not all(out):
        raise AsrError(f"hotwords {list(hotwords)!r} include an empty one")
    return out


def wav_bytes(pcm: bytes, rate: int = CALL_RATE) -> bytes:
    """16-bit mono PCM as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(_SAMPLE_BYTES)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def parse_transcription(data: Any) -> tuple[str, float]:
    """(text, confidence) from a verbose_json (or plain json) body; AsrError if malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise AsrError('malformed response: no "text" string')
    text = " ".join(data["text"].split())
    if not text:
        return "", 0.0
    return text, _confidence(data.get("segments"))


def _confidence(segments: Any) -> float:
    """exp(duration-weighted mean avg_logprob) over the segments that carry one."""
    total = weights = 0.0
    for segment in segments if isinstance(segments, list) else ():
        logprob = segment.get("avg_logprob") if isinstance(segment, dict) else None
        if not isinstance(logprob, int | float) or not math.isfinite(logprob):
            continue
        weight = _duration(segment)
        total += logprob * weight
        weights += weight
    if not weights:
        return TEXT_ONLY_CONFIDENCE
    return math.exp(min(0.0, total / weights))


def _duration(segment: dict[str, Any]) -> float:
    start, end = segment.get("start"), segment.get("end")
    if isinstance(start, int | float) and isinstance(end, int | float) and end > start:
        return float(end - start)
    return 0.01  # no timing: count it, lightly, rather than drop its score


class OpenAiSttEngine(AsrEngine):
    """An OpenAI-compatible transcription endpoint, shared by every call's streams.

    `url` is the API base ("https://api.openai.com/v1", "http://host:8000/v1"); `model` e.g.
    "whisper-1", "gpt-4o-mini-transcribe" or a self-hosted model's name. `language` is used for
    streams opened without options. `timeout_s` bounds each request as a whole. `transport`
    replaces httpx's network transport (tests, proxies).
    """

    name = ENGINE_NAME
    sample_rate = CALL_RATE

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        language: str = "en-US",
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.strip() or not model.strip():
            raise AsrError("the OpenAI speech-to-text engine needs a url and a model")
        if not timeout_s > 0:
            raise AsrError(f"asr.openai timeout must be positive, got {timeout_s}")
        self.url = f"{url.strip().rstrip('/')}/audio/transcriptions"
        self.model = model
        self.language = iso_language(language)
        self.timeout_s = timeout_s
        self._api_key = api_key or None
        self._where = safe_url(self.url)
        self._client = make_client(transport)
        self._executor = ThreadPoolExecutor(_PREPARE_WORKERS, thread_name_prefix="openai-stt")

    def __repr__(self) -> str:  # never the key
        return f"OpenAiSttEngine({self._where!r}, {self.model!r})"

    def open_stream(self, options: RecognitionOptions | None = None) -> OpenAiSttStream:
        hints = SttHints(self.language) if options is None else hints_for(options)
        return OpenAiSttStream(self, hints)

    def check_options(self, options: RecognitionOptions) -> None:
        """Raise AsrError if `options` could not be put to the API (for validating a dialplan)."""
        hints_for(options)

    def close(self) -> None:
        """Drop requests not yet started and close the connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def transcribe(self, pcm: bytes, hints: SttHints) -> AsrResult:
        """Send one utterance and wait for its final result (AsrError on any failure)."""
        started = time.monotonic()
        data = self._request(pcm, hints)
        text, confidence = parse_transcription(data)
        if hints.digits:
            text = normalise_digits(text, hints.extra_phrases)
        log.debug(
            "openai stt %s: %.1f s of audio -> %d chars in %.2f s",
            self._where,
            len(pcm) / (CALL_RATE * _SAMPLE_BYTES),
            len(text),
            time.monotonic() - started,
        )
        return AsrResult(text, confidence if text else 0.0, is_final=True, engine=ENGINE_NAME)

    def _submit(self, pcm: bytes, hints: SttHints) -> Future[AsrResult] | None:
        try:
            return self._executor.submit(self.transcribe, pcm, hints)
        except RuntimeError:  # closed: finish() sends its own request
            return None

    def _request(self, pcm: bytes, hints: SttHints) -> Any:
        if self._client.is_closed:
            raise self._error(Failure("the engine is closed"))
        form = {
            "model": self.model,
            "language": hints.language,
            "response_format": "verbose_json",
            "temperature": "0",
        }
        if hints.prompt:
            form["prompt"] = hints.prompt
        headers = {"Accept": "application/json", **auth_headers(self._api_key)}
        try:
            status, reply_headers, body = post(
                self._client,
                self.url,
                headers=headers,
                timeout_s=self.timeout_s,
                files={"file": ("speech.wav", wav_bytes(pcm), "audio/wav")},
                data=form,
            )
        except (httpx.HTTPError, httpx.InvalidURL, ResponseTooLarge) as exc:
            raise self._error(transport_failure(exc, self.timeout_s)) from exc
        if not 200 <= status < 300:
            raise self._error(status_failure(status, reply_headers, body, CONFIG_KEY))
        try:
            return json.loads(body)
        except ValueError:  # includes UnicodeDecodeError
            text = " ".join(body.decode("utf-8", errors="replace").split())[:80]
            raise self._error(Failure(f"malformed response, not JSON: {text!r}")) from None

    def _error(self, failure: Failure) -> AsrError:
        message = redact(f"OpenAI speech-to-text {self._where}: {failure.message}", self._api_key)
        return AsrError(message, retry_after_s=failure.retry_after_s)


class OpenAiSttStream(AsrStream):
    """One utterance: its PCM, and at most one request started early by `prepare_final`."""

    def __init__(self, engine: OpenAiSttEngine, hints: SttHints) -> None:
        self._engine = engine
        self.hints = hints
        self._audio = bytearray()
        self._prepared: Future[AsrResult] | None = None
        self._open = True

    def feed(self, pcm: bytes) -> None:
        """Buffer `pcm`; the API gives no partial results. Discards a prepared request."""
        self._check_open("feed")
        if len(pcm) % _SAMPLE_BYTES:
            raise AsrError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
        if pcm:
            self._discard()
            self._audio += pcm
        return None

    def prepare_final(self) -> None:
        """Send the audio so far now, on a worker; its answer is `finish()`'s unless more audio
        is fed. Returns None: the result is on its way."""
        self._check_open("prepare_final")
        if self._prepared is None and self._audio:
            self._prepared = self._engine._submit(bytes(self._audio), self.hints)
        return None

    def finish(self) -> AsrResult:
        """The final result: the prepared request's answer, or a request sent now."""
        self._check_open("finish")
        self._open = False
        prepared, self._prepared = self._prepared, None
        if not self._audio:
            return AsrResult("", 0.0, is_final=True, engine=ENGINE_NAME)
        if prepared is not None and prepared.cancel():
            prepared = None  # still queued behind other calls' requests: send it from here
        if prepared is None:
            return self._engine.transcribe(bytes(self._audio), self.hints)
        try:
            return prepared.result()
        except CancelledError:  # the engine closed under it
            raise self._engine._error(Failure("the engine is closed")) from None

    def close(self) -> None:
        """Drop the utterance and any prepared request (its answer is ignored)."""
        self._open = False
        self._discard()

    def _discard(self) -> None:
        if self._prepared is not None:
            self._prepared.cancel()  # a request already sent runs on; nobody reads its answer
            self._prepared = None

    def _check_open(self, verb: str) -> None:
        if not self._open:
            raise AsrError(f"{verb}() on a stream that is already finished or closed")
