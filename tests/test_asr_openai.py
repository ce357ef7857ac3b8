"""The OpenAI-compatible speech-to-text engine against a real HTTP server on loopback."""

from __future__ import annotations

import io
import logging
import math
import subprocess
import sys
import time
import wave
from collections.abc import Iterator

import numpy as np
import pytest

from app.asr.base import AsrError, RecognitionOptions
from app.asr.openai import TEXT_ONLY_CONFIDENCE, OpenAiSttEngine
from tests.http_backends import JsonBackend, RecordedRequest, Reply, http_date, unused_url

KEY = "sk-test-Zq81secretKEY"
PATH = "/v1/audio/transcriptions"
SPEECH = np.arange(-1600, 1600, 2, dtype="<i2").tobytes()  # 0.2 s, every sample different


@pytest.fixture
def backend() -> Iterator[JsonBackend]:
    with JsonBackend() as server:
        yield server


def make_engine(url: str, **overrides) -> OpenAiSttEngine:
    fields = {"model": "whisper-1", "api_key": KEY, "timeout_s": 1.0, **overrides}
    return OpenAiSttEngine(url, **fields)


@pytest.fixture
def engine(backend) -> Iterator[OpenAiSttEngine]:
    stt = make_engine(f"{backend.url}/v1")
    yield stt
    stt.close()


def recognise(engine: OpenAiSttEngine, options: RecognitionOptions | None = None, pcm=SPEECH):
    stream = engine.open_stream(options)
    stream.feed(pcm[:1000])
    stream.feed(pcm[1000:])
    return stream.finish()


def transcription(text: str, segments: list[dict] | None = None) -> dict:
    return {"task": "transcribe", "language": "english", "text": text, "segments": segments or []}


def sent_samples(request: RecordedRequest) -> bytes:
    """The PCM of the WAV file in a transcription request, checked to be 8 kHz mono 16-bit."""
    with wave.open(io.BytesIO(request.form["file"].data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        return wav.readframes(wav.getnframes())


def fail(engine: OpenAiSttEngine, options: RecognitionOptions | None = None) -> AsrError:
    with pytest.raises(AsrError) as caught:
        recognise(engine, options)
    return caught.value


# -- success


def test_request_is_an_openai_transcription(backend, engine):
    segments = [
        {"start": 0.0, "end": 1.0, "avg_logprob": -0.1},
        {"start": 1.0, "end": 4.0, "avg_logprob": -0.5},
    ]
    backend.route("POST", PATH, Reply.json(transcription(" Check my balance.", segments)))

    result = recognise(engine)

    assert (result.text, result.is_final, result.engine) == ("Check my balance.", True, "openai")
    assert result.confidence == pytest.approx(math.exp((-0.1 * 1 + -0.5 * 3) / 4))
    (request,) = backend.requests
    assert (request.method, request.path) == ("POST", PATH)
    assert request.headers["authorization"] == f"Bearer {KEY}"
    form = request.form
    assert {name: part.text for name, part in form.items() if name != "file"} == {
        "model": "whisper-1",
        "language": "en",
        "response_format": "verbose_json",
        "temperature": "0",
    }
    assert (form["file"].filename, form["file"].content_type) == ("speech.wav", "audio/wav")
    assert sent_samples(request) == SPEECH


def test_no_api_key_sends_no_authorization(backend):
    backend.route("POST", PATH, Reply.json({"text": "hello"}))
    stt = make_engine(f"{backend.url}/v1/", api_key=None)
    try:
        assert recognise(stt).text == "hello"
    finally:
        stt.close()
    assert "authorization" not in backend.requests[0].headers


def test_text_only_answer_has_the_documented_confidence(backend, engine):
    backend.route("POST", PATH, Reply.json({"text": "  yes  please "}))

    result = recognise(engine)

    assert (result.text, result.confidence) == ("yes please", TEXT_ONLY_CONFIDENCE)


@pytest.mark.parametrize(
    ("options", "language", "prompt"),
    [
        (RecognitionOptions(language="de-DE"), "de", None),
        (
            RecognitionOptions(phrases=("Check balance", "pay bill")),
            "en",
            "check balance, pay bill",
        ),
        (RecognitionOptions(grammar="yes_no", extra_phrases=("agent",)), "en", "yes, no, agent"),
        # digits: no prompt at all, it made Whisper drop digits (see app.asr.whisper)
        (RecognitionOptions(grammar="digits"), "en", None),
        (RecognitionOptions(grammar="digits", extra_phrases=("agent",)), "en", None),
        (
            RecognitionOptions(jsgf="#JSGF V1.0; grammar g; public <g> = red | blue;"),
            "en",
            "blue, red",
        ),
        (
            RecognitionOptions(phrases=("check balance",), hotwords=("Zyxel", "check balance")),
            "en",
            "Zyxel, check balance",
        ),
        (
            RecognitionOptions(grammar="digits", initial_prompt="Card 1 2 3 4.", hotwords=("PIN",)),
            "en",
            "Card 1 2 3 4. PIN",
        ),
        (RecognitionOptions(initial_prompt="A call to Acme Bank."), "en", "A call to Acme Bank."),
    ],
)
def test_options_become_language_and_prompt(backend, engine, options, language, prompt):
    backend.route("POST", PATH, Reply.json({"text": "ok"}))

    recognise(engine, options)

    form = backend.requests[0].form
    assert form["language"].text == language
    assert (form["prompt"].text if "prompt" in form else None) == prompt


@pytest.mark.parametrize(
    ("said", "heard"),
    [
        ("4170, 92.", "four one seven zero nine two"),
        ("My number is double 5 oh 3", "five five zero three"),
        ("I want an agent, please.", "agent"),
    ],
)
def test_digits_are_normalised_to_spoken_words(backend, engine, said, heard):
    backend.route("POST", PATH, Reply.json(transcription(said, [{"avg_logprob": -0.2}])))

    result = recognise(engine, RecognitionOptions(grammar="digits", extra_phrases=("agent",)))

    assert result.text == heard
    assert result.confidence == pytest.approx(math.exp(-0.2))


def test_empty_utterance_sends_nothing(backend, engine):
    result = engine.open_stream().finish()

    assert (result.text, result.confidence, result.is_final) == ("", 0.0, True)
    assert backend.requests == []


def test_empty_transcript_has_zero_confidence(backend, engine):
    backend.route("POST", PATH, Reply.json(transcription("", [{"avg_logprob": -0.01}])))
    result = recognise(engine)
    assert (result.text, result.confidence) == ("", 0.0)


# -- prepare_final


def samples_heard(request: RecordedRequest) -> dict:
    return {"text": f"{len(sent_samples(request)) // 2} samples"}


def test_prepared_request_is_the_final_one(backend, engine):
    backend.route("POST", PATH, samples_heard)
    stream = engine.open_stream()
    stream.feed(SPEECH)

    assert stream.prepare_final() is None
    backend.wait_for_requests(1, timeout_s=2)
    result = stream.finish()

    assert result.text == f"{len(SPEECH) // 2} samples"
    assert len(backend.requests) == 1


def test_audio_after_prepare_discards_the_prepared_answer(backend, engine):
    backend.route("POST", PATH, samples_heard)
    stream = engine.open_stream()
    stream.feed(SPEECH[:2000])
    stream.prepare_final()
    backend.wait_for_requests(1, timeout_s=2)

    stream.feed(SPEECH[2000:])
    result = stream.finish()

    assert result.text == f"{len(SPEECH) // 2} samples"
    assert [sent_samples(r) for r in backend.requests] == [SPEECH[:2000], SPEECH]


def test_close_discards_the_stream(backend, engine):
    backend.route("POST", PATH, Reply.json({"text": "hello"}))
    stream = engine.open_stream()
    stream.feed(SPEECH)
    stream.prepare_final()

    stream.close()

    with pytest.raises(AsrError, match="already finished or closed"):
        stream.feed(SPEECH)
    with pytest.raises(AsrError, match="already finished or closed"):
        stream.finish()


def test_closed_engine_refuses_with_an_asr_error(backend, engine):
    stream = engine.open_stream()
    stream.feed(SPEECH)

    engine.close()

    with pytest.raises(AsrError, match="the engine is closed"):
        stream.finish()
    assert backend.requests == []


def test_odd_bytes_are_refused(engine):
    with pytest.raises(AsrError, match="whole 16-bit samples"):
        engine.open_stream().feed(b"\x01\x02\x03")


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (RecognitionOptions(grammar="digits", phrases=("yes",)), "only one of"),
        (RecognitionOptions(grammar="colours"), "unknown grammar"),
        (RecognitionOptions(language="english!"), "not a language tag"),
        (RecognitionOptions(phrases=("!!",)), "has no words"),
        (RecognitionOptions(hotwords=("Acme", "  ")), "empty one"),
    ],
)
def test_bad_options_are_refused_before_any_request(backend, engine, options, complaint):
    with pytest.raises(AsrError, match=complaint):
        engine.open_stream(options)
    with pytest.raises(AsrError, match=complaint):
        engine.check_options(options)
    assert backend.requests == []


# -- failures


@pytest.mark.parametrize("status", [401, 403])
def test_refused_authentication_points_at_the_config(backend, engine, status):
    body = {"error": {"message": f"Incorrect API key provided: {KEY[:6]}***{KEY[-4:]}."}}
    backend.route("POST", PATH, Reply.error(status, body))

    error = fail(engine)

    assert f"authentication was refused (HTTP {status})" in str(error)
    assert "asr.openai.api_key" in str(error) and "OPENAI_API_KEY" in str(error)
    assert KEY[-4:] not in str(error)  # the server's masked echo of the key is left out
    assert error.retry_after_s is None


def test_rate_limit_with_retry_after_seconds(backend, engine):
    body = {"error": {"message": "Rate limit reached for requests"}}
    backend.route("POST", PATH, Reply.json(body, 429, headers={"Retry-After": "7"}))

    error = fail(engine)

    assert error.retry_after_s == 7.0
    assert "rate limited (HTTP 429, retry after 7 s): Rate limit reached" in str(error)


def test_rate_limit_with_retry_after_date(backend, engine):
    backend.route("POST", PATH, Reply.json({}, 429, headers={"Retry-After": http_date(30)}))

    error = fail(engine)

    assert error.retry_after_s is not None and 28.0 <= error.retry_after_s <= 30.0


def test_rate_limit_without_retry_after(backend, engine):
    backend.route("POST", PATH, Reply.error(429))
    assert fail(engine).retry_after_s is None


def test_server_error_gives_status_and_excerpt(backend, engine):
    body = {"error": {"message": "CUDA out of memory. " + "x" * 500}}
    backend.route("POST", PATH, Reply.error(500, body))

    error = fail(engine)

    assert "HTTP 500: CUDA out of memory." in str(error)
    assert len(str(error)) < 300
    assert error.retry_after_s is None


def test_other_status_with_a_text_body(backend, engine):
    backend.route("POST", PATH, Reply.text("<html>Not Found</html>", 404))
    assert str(fail(engine)).endswith("HTTP 404: <html>Not Found</html>")


def test_hung_server_times_out_within_the_timeout(backend):
    backend.route("POST", PATH, Reply.hang())
    stt = make_engine(f"{backend.url}/v1", timeout_s=0.4)
    started = time.monotonic()
    try:
        error = fail(stt)
    finally:
        stt.close()

    elapsed = time.monotonic() - started
    assert "timed out after 0.4 s" in str(error)
    assert 0.35 <= elapsed < 0.4 + 0.6


@pytest.mark.parametrize(
    "reply",
    [
        Reply.malformed(),
        Reply.text("<html>502 Bad Gateway</html>", 200),
        Reply.json({"segments": []}),
        Reply.json({"text": 42}),
        Reply.json(["text"]),
    ],
)
def test_malformed_answers(backend, engine, reply):
    backend.route("POST", PATH, reply)
    assert "malformed response" in str(fail(engine))


def test_connection_refused():
    stt = make_engine(f"{unused_url()}/v1")
    try:
        assert "connection refused" in str(fail(stt))
    finally:
        stt.close()


def test_the_api_key_is_in_no_message_and_no_log(backend, caplog):
    caplog.set_level(logging.DEBUG)
    stt = make_engine(f"{backend.url}/v1", timeout_s=0.3)
    echoing = {"error": {"message": f"upstream rejected token {KEY}"}}
    errors = []
    try:
        for reply in (
            Reply.error(401, {"error": {"message": f"bad key {KEY}"}}),
            Reply.error(500, echoing),
            Reply.json(echoing, 429, headers={"Retry-After": "1"}),
            Reply.text(f"not json {KEY}", 200),
            Reply.hang(),
        ):
            backend.route("POST", PATH, reply)
            errors.append(fail(stt))
        backend.route("POST", PATH, Reply.json({"text": "fine"}))
        assert recognise(stt).text == "fine"
    finally:
        stt.close()

    assert len(errors) == 5
    assert "***" in str(errors[1])  # the echoed key was there, and was redacted
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
        assert KEY not in str(error.__cause__ or "")
    assert KEY not in repr(stt)
    assert caplog.records, "expected debug logging to be captured"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in (caplog.handler.format(record) or "")


def test_module_does_not_import_faster_whisper():
    code = "import sys, app.asr.openai; assert 'faster_whisper' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
