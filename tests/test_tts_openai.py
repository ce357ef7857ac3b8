"""The OpenAI-compatible speech engine against a real HTTP server on loopback."""

from __future__ import annotations

import io
import logging
import threading
import time
import wave
from collections.abc import Iterator

import numpy as np
import pytest

from app.tts.base import TtsError
from app.tts.openai import OpenAiTtsEngine
from tests.http_backends import JsonBackend, Reply, http_date, unused_url

KEY = "sk-test-Tts42secretKEY"
PATH = "/v1/audio/speech"
PCM = np.arange(-3000, 3000, 7, dtype="<i2").tobytes()  # every sample different


@pytest.fixture
def backend() -> Iterator[JsonBackend]:
    with JsonBackend() as server:
        yield server


def make_engine(url: str, **overrides) -> OpenAiTtsEngine:
    fields = {"model": "tts-1", "api_key": KEY, "timeout_s": 1.0, **overrides}
    return OpenAiTtsEngine(url, **fields)


@pytest.fixture
def engine(backend) -> Iterator[OpenAiTtsEngine]:
    tts = make_engine(f"{backend.url}/v1")
    yield tts
    tts.close()


def wav_file(pcm: bytes, rate: int = 24000, channels: int = 1, extra_chunk: bool = True) -> bytes:
    """A WAV file; `extra_chunk` puts a LIST chunk between fmt and data, as ffmpeg does."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    data = out.getvalue()
    if not extra_chunk:
        return data
    fmt_end = 12 + 8 + 16
    info = b"LIST" + (5).to_bytes(4, "little") + b"INFO!\x00"  # odd size: padded
    return data[:fmt_end] + info + data[fmt_end:]


def collect(engine: OpenAiTtsEngine, text: str = "Hello there.") -> tuple[list[bytes], TtsError]:
    """What `synthesize` yielded before it raised, and the error."""
    chunks: list[bytes] = []
    with pytest.raises(TtsError) as caught:
        for chunk in engine.synthesize(text):
            chunks.append(chunk)
    return chunks, caught.value


# -- success


def test_request_and_streamed_pcm(backend, engine):
    release = threading.Event()
    pieces = [PCM[:3], PCM[3:10], PCM[10:11], PCM[11:500], PCM[500:]]  # odd splits
    backend.route("POST", PATH, Reply.stream(pieces, content_type="audio/pcm", hold=release))

    audio = engine.synthesize("Your balance is 12 euros.")
    first = next(audio)  # the server is holding the rest back: this piece came alone
    release.set()
    rest = list(audio)

    assert first == PCM[:2]
    assert all(len(chunk) % 2 == 0 and chunk for chunk in rest)
    assert first + b"".join(rest) == PCM
    (request,) = backend.requests
    assert (request.method, request.path) == ("POST", PATH)
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json == {
        "model": "tts-1",
        "input": "Your balance is 12 euros.",
        "voice": "alloy",
        "response_format": "pcm",
        "speed": 1.0,
    }
    assert engine.sample_rate == 24000


def test_voice_speed_and_no_key(backend):
    backend.route("POST", PATH, Reply.text(PCM, content_type="audio/pcm"))
    tts = make_engine(f"{backend.url}/v1/", voice="onyx", api_key=None, speed=1.25)
    try:
        assert b"".join(tts.synthesize("Hi.", voice="nova")) == PCM
        assert b"".join(tts.synthesize("Hi.")) == PCM
    finally:
        tts.close()

    first, second = backend.requests
    assert (first.json["voice"], second.json["voice"]) == ("nova", "onyx")
    assert first.json["speed"] == 1.25
    assert "authorization" not in first.headers


def test_has_voice_claims_only_voices_sure_to_exist(engine):
    assert engine.has_voice("alloy") and engine.has_voice("nova")
    assert not engine.has_voice("en_US-lessac-medium")  # a Piper voice: not this engine's
    custom = make_engine("http://127.0.0.1:1/v1", voice="af_bella")
    assert custom.has_voice("af_bella")
    custom.close()


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_blank_text_yields_nothing_without_a_request(backend, engine, text):
    assert list(engine.synthesize(text)) == []
    assert backend.requests == []


def test_odd_total_drops_the_last_byte(backend, engine, caplog):
    backend.route("POST", PATH, Reply.stream([PCM[:5], PCM[5:10] + b"\x07"]))

    assert b"".join(engine.synthesize("Hi.")) == PCM[:10]
    assert "middle of a sample" in caplog.text


@pytest.mark.parametrize("content_type", ["audio/wav", "application/octet-stream"])
def test_wav_answer_is_read_past_its_header(backend, engine, content_type):
    body = wav_file(PCM)
    pieces = [body[i : i + 5] for i in range(0, len(body), 5)]  # header split everywhere
    backend.route("POST", PATH, Reply.stream(pieces, content_type=content_type))

    chunks = list(engine.synthesize("Hi."))

    assert b"".join(chunks) == PCM
    assert all(len(chunk) % 2 == 0 for chunk in chunks)


def test_wav_at_another_rate_names_both_rates(backend, engine):
    backend.route("POST", PATH, Reply.text(wav_file(PCM, rate=22050), content_type="audio/wav"))

    chunks, error = collect(engine)

    assert chunks == []
    assert "22050 Hz" in str(error) and "24000 Hz" in str(error)


def test_wav_at_the_configured_rate(backend):
    backend.route("POST", PATH, Reply.text(wav_file(PCM, rate=22050), content_type="audio/wav"))
    tts = make_engine(f"{backend.url}/v1", sample_rate=22050)
    try:
        assert b"".join(tts.synthesize("Hi.")) == PCM
    finally:
        tts.close()


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (wav_file(PCM, channels=2), "2-channel"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "ends before its data chunk"),
        (b"not a riff file", "not a RIFF file"),
    ],
)
def test_wav_answers_we_cannot_play(backend, engine, body, complaint):
    backend.route("POST", PATH, Reply.text(body, content_type="audio/wav"))
    chunks, error = collect(engine)
    assert chunks == [] and complaint in str(error)


# -- failures, raised before any audio


@pytest.mark.parametrize("status", [401, 403])
def test_refused_authentication_points_at_the_config(backend, engine, status):
    backend.route("POST", PATH, Reply.error(status, {"error": {"message": "Incorrect API key"}}))

    chunks, error = collect(engine)

    assert chunks == []
    assert f"authentication was refused (HTTP {status})" in str(error)
    assert "tts.openai.api_key" in str(error) and "OPENAI_API_KEY" in str(error)


def test_rate_limit_with_retry_after_seconds(backend, engine):
    backend.route("POST", PATH, Reply.json({}, 429, headers={"Retry-After": "12"}))

    chunks, error = collect(engine)

    assert chunks == []
    assert error.retry_after_s == 12.0
    assert "rate limited (HTTP 429, retry after 12 s)" in str(error)


def test_rate_limit_with_retry_after_date(backend, engine):
    backend.route("POST", PATH, Reply.json({}, 429, headers={"Retry-After": http_date(60)}))
    _, error = collect(engine)
    assert error.retry_after_s is not None and 58.0 <= error.retry_after_s <= 60.0


def test_server_error_gives_status_and_excerpt(backend, engine):
    backend.route("POST", PATH, Reply.error(503, {"detail": "model is loading"}))

    chunks, error = collect(engine)

    assert chunks == []
    assert str(error).endswith("HTTP 503: model is loading")
    assert error.retry_after_s is None


def test_json_instead_of_audio_is_an_error(backend, engine):
    backend.route("POST", PATH, Reply.json({"error": {"message": "voice 'x' not found"}}))
    chunks, error = collect(engine)
    assert chunks == [] and "not audio: voice 'x' not found" in str(error)


def test_empty_answer_is_an_error(backend, engine):
    backend.route("POST", PATH, Reply.text(b"", content_type="audio/pcm"))
    assert "answered no audio" in str(collect(engine)[1])


def test_hung_server_times_out_within_the_timeout(backend):
    backend.route("POST", PATH, Reply.hang())
    tts = make_engine(f"{backend.url}/v1", timeout_s=0.4)
    started = time.monotonic()
    try:
        chunks, error = collect(tts)
    finally:
        tts.close()

    elapsed = time.monotonic() - started
    assert chunks == [] and "timed out after 0.4 s" in str(error)
    assert 0.35 <= elapsed < 0.4 + 0.6


def test_closed_engine_refuses_with_a_tts_error(backend, engine):
    engine.close()
    chunks, error = collect(engine)
    assert chunks == [] and "the engine is closed" in str(error)
    assert backend.requests == []


def test_connection_refused():
    tts = make_engine(f"{unused_url()}/v1")
    try:
        chunks, error = collect(tts)
    finally:
        tts.close()
    assert chunks == [] and "connection refused" in str(error)


# -- failures after audio started


def test_stream_cut_mid_body_raises_after_the_audio_so_far(backend, engine):
    backend.route("POST", PATH, Reply.stream([PCM[:100], PCM[100:200]], cut=True))

    chunks, error = collect(engine)

    assert b"".join(chunks) == PCM[:200]
    assert "stream broke after 200 bytes of audio" in str(error)


def test_stream_that_stalls_times_out(backend):
    stalled = threading.Event()  # never set
    backend.route("POST", PATH, Reply.stream([PCM[:100], PCM[100:]], hold=stalled))
    tts = make_engine(f"{backend.url}/v1", timeout_s=0.3)
    try:
        chunks, error = collect(tts)
    finally:
        tts.close()

    assert b"".join(chunks) == PCM[:100]
    assert "stream broke after 100 bytes of audio: timed out after 0.3 s" in str(error)


def test_closing_the_generator_early_leaves_the_engine_usable(backend, engine):
    stalled = threading.Event()
    backend.route("POST", PATH, Reply.stream([PCM[:100], PCM[100:]], hold=stalled))
    audio = engine.synthesize("A long prompt the caller barges into.")
    assert next(audio) == PCM[:100]

    audio.close()  # barge-in
    backend.route("POST", PATH, Reply.text(PCM, content_type="audio/pcm"))

    assert b"".join(engine.synthesize("Next.")) == PCM


def test_the_api_key_is_in_no_message_and_no_log(backend, caplog):
    caplog.set_level(logging.DEBUG)
    tts = make_engine(f"{backend.url}/v1", timeout_s=0.3)
    echoing = {"error": {"message": f"upstream rejected token {KEY}"}}
    errors = []
    try:
        for reply in (
            Reply.error(401, {"error": {"message": f"bad key {KEY}"}}),
            Reply.error(500, echoing),
            Reply.json(echoing, 429, headers={"Retry-After": "1"}),
            Reply.json(echoing, 200),
            Reply.hang(),
            Reply.stream([PCM[:10], PCM[10:]], cut=True),
        ):
            backend.route("POST", PATH, reply)
            errors.append(collect(tts)[1])
        backend.route("POST", PATH, Reply.text(PCM, content_type="audio/pcm"))
        assert b"".join(tts.synthesize("fine")) == PCM
    finally:
        tts.close()

    assert len(errors) == 6
    assert "***" in str(errors[1])  # the echoed key was there, and was redacted
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
        assert KEY not in str(error.__cause__ or "")
    assert KEY not in repr(tts)
    assert caplog.records, "expected debug logging to be captured"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in (caplog.handler.format(record) or "")
