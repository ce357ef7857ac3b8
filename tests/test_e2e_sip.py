"""End to end: real SIP peers (sipp, baresip) dial a running `switchboard serve` over loopback.

The caller speaks an account number built from one FSDD speaker's recordings, as G.711 RTP. We
check what a person would: the call is answered, the bot hears the digits, reads them back (the
caller's recording contains the bot's TTS rendering of the reply), hangs up, and the call is on
record. Once on the embedded defaults (SQLite, in-process state) and once on PostgreSQL + Redis.

The account numbers are strings the bundled PocketSphinx model recognises from these recordings
when given the audio directly (its accuracy across FSDD speakers is far from perfect and is
measured by `bench/pipeline_rtf.py`): what these tests prove is that the live path (RTP, jitter
buffer, endpointing, streaming) delivers the same result as the engine does offline.
"""

from __future__ import annotations

import difflib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.asr.numbers import spoken_digits
from app.dialog.template import parse_template
from app.media.resample import resample
from app.state.redis import RedisState
from app.store import get_call, get_turns, open_engine
from app.tts.espeak import EspeakEngine
from tests.server_process import ServerProcess, call_id_from
from tests.sip import sipp
from tests.sip.audio_match import find_reference_pieces, telephone_reference
from tests.sip.baresip import run_baresip_call
from tests.sip.ports import HOST
from tests.sip.rtp_pcap import build_digit_utterance, silence, write_rtp_pcap
from tests.sip.wavfile import write_wav

pytestmark = pytest.mark.sip

SPEAKER = "jackson"
PROMPTS_MS = 7500  # greeting + question at eSpeak's pace (5.5 s): the caller answers after them
CALL_WAIT_S = 30  # ample for greeting, answer, read-back and goodbye
REPLY = parse_template("You said {account | digits}. Thank you.")  # dialplans/demo.yaml


class Backend:
    """Where a server keeps records and live state, and how a test reads them back."""

    def __init__(self, name: str, overrides: dict[str, str], store_url: str) -> None:
        self.name = name
        self.overrides = overrides
        self.store_url = store_url

    def call(self, call_id: str, timeout: float = 10.0) -> dict:
        """The call's row once its end is recorded (the writer is asynchronous)."""
        engine = open_engine(self.store_url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                row = get_call(engine, call_id)
                if row and row["ended_at"] is not None:
                    return row
                if time.monotonic() > deadline:
                    raise AssertionError(f"no ended call record for {call_id}: {row}")
                time.sleep(0.2)
        finally:
            engine.dispose()

    def turns(self, call_id: str) -> list[dict]:
        engine = open_engine(self.store_url)
        try:
            return get_turns(engine, call_id)
        finally:
            engine.dispose()


@pytest.fixture(scope="module", params=["embedded", "postgres+redis"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            pg_url: str, redis_url: str) -> Iterator[Backend]:  # fmt: skip
    if request.param == "embedded":
        db = tmp_path_factory.mktemp("embedded") / "switchboard.db"
        url = f"sqlite:///{db}"
        yield Backend("embedded", {"SWITCHBOARD_STORE__URL": url}, url)
        return
    schema = f"sb_e2e_{uuid.uuid4().hex[:10]}"
    base = make_url(pg_url)
    plain = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = base.set(query={"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    overrides = {"SWITCHBOARD_STORE__URL": url, "SWITCHBOARD_STATE__URL": redis_url}
    yield Backend("postgres+redis", overrides, url)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp(f"server-{backend.name.replace('+', '-')}")
    process = ServerProcess.start({**backend.overrides, "SWITCHBOARD_SIP__MAX_CALLS": "1"}, workdir)
    yield process
    code = process.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{process.log[-3000:]}"
    assert "Traceback" not in process.log, process.log[-5000:]


@pytest.fixture(scope="module")
def reply_tts() -> EspeakEngine:
    return EspeakEngine()  # the server's default voice and pace


def caller_speech(shared_data: Path, digits: str) -> bytes:
    """Silence through the bot's prompts, then the account number, then silence."""
    utterance = build_digit_utterance(shared_data, SPEAKER, digits, seed=int(digits))
    return silence(PROMPTS_MS) + utterance + silence(1000)


def assert_recorded(backend: Backend, call_id: str, digits: str, codec: str) -> dict:
    call = backend.call(call_id)
    assert call["disposition"] == "ANSWERED"
    assert call["codec"] == codec
    assert call["dialplan"] == "demo" and call["dst"] == "1000"
    assert call["hangup_by"] == "bot"
    assert call["billsec"] > 5
    turns = backend.turns(call_id)
    assert len(turns) == 1, turns
    turn = turns[0]
    assert spoken_digits(turn["transcript"]) == digits, turn
    assert turn["grammar"] == "digits" and turn["engine"] == "pocketsphinx"
    assert turn["speech_end_at"] <= turn["asr_final_at"] <= turn["first_audio_at"]
    return turn


@pytest.mark.parametrize(("codec", "transport"), [("PCMU", "udp"), ("PCMA", "tcp")])
def test_sipp_caller_says_account_number(
    server: ServerProcess, backend: Backend, shared_data: Path, tmp_path: Path,
    codec: str, transport: str,
) -> None:  # fmt: skip
    """sipp replays the caller's RTP from a pcap in bursts rather than paced every 20 ms, and
    PJSIP's jitter buffer loses some of that audio (seen: the first digit of a string), so the
    bot may reprompt (then, after its retries, it says goodbye); either way the bot ends the
    call, and we check the first answer with at most one digit wrong. The paced peer (baresip,
    below) must get every digit right."""
    digits = "8145" if codec == "PCMU" else "3840"
    pcap = write_rtp_pcap(caller_speech(shared_data, digits), tmp_path / "caller.pcap", codec)
    mark = len(server.log)
    result = sipp.speech_call(
        HOST, server.port, pcap, codec=codec, wait_s=50, bye_from="server",
        transport=transport, workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe()
    assert 200 in result.responses
    call_id = call_id_from(server.log, mark)
    call = backend.call(call_id)
    assert call["disposition"] == "ANSWERED" and call["codec"] == codec
    assert call["hangup_by"] == "bot" and call["billsec"] > 10
    first = backend.turns(call_id)[0]
    heard = spoken_digits(first["transcript"])
    matcher = difflib.SequenceMatcher(a=digits, b=heard)
    assert heard and matcher.ratio() >= 0.75, first  # one digit lost, added or changed at most
    assert first["grammar"] == "digits" and first["engine"] == "pocketsphinx"


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_baresip_caller_hears_the_digits_read_back(
    server: ServerProcess, backend: Backend, shared_data: Path, tmp_path: Path,
    reply_tts: EspeakEngine, codec: str,
) -> None:  # fmt: skip
    digits = "9075" if codec == "PCMU" else "1809"
    speech = write_wav(tmp_path / "caller.wav", caller_speech(shared_data, digits), 8000)
    mark = len(server.log)
    result = run_baresip_call(server.uri(), speech, codec, CALL_WAIT_S, tmp_path / "baresip")
    assert result.established, result.describe()
    assert result.closed_by == "remote", result.describe()  # the bot hung up
    call_id = call_id_from(server.log, mark)
    assert_recorded(backend, call_id, digits, codec)

    reply = REPLY.render({"account": digits})
    rendered = b"".join(reply_tts.synthesize(reply))
    reference = telephone_reference(resample(rendered, reply_tts.sample_rate, 8000), 8000, codec)
    match = find_reference_pieces(result.received_pcm(), reference)
    assert match.correlation > 0.8, f"reply {reply!r} not found in what the caller heard: {match}"


def test_unknown_number_is_404(server: ServerProcess, tmp_path: Path) -> None:
    result = sipp.expect_status(HOST, server.port, 404, service="9999", workdir=tmp_path)
    assert result.ok, result.describe()


def test_no_common_codec_is_488(server: ServerProcess, tmp_path: Path) -> None:
    result = sipp.expect_status(HOST, server.port, 488, codec="G722", workdir=tmp_path)
    assert result.ok, result.describe()


def test_busy_server_is_503_and_live_state_shows_the_call(
    server: ServerProcess, backend: Backend, redis_url: str, tmp_path: Path
) -> None:
    """max_calls is 1: a second caller is turned away while the first is on the line."""
    mark = len(server.log)
    with sipp.call_in_progress(HOST, server.port, lambda: server.log, tmp_path / "first"):
        busy = sipp.expect_status(HOST, server.port, 503, workdir=tmp_path / "second")
        assert busy.ok, busy.describe()
        if backend.name == "postgres+redis":
            state = RedisState(redis_url, node="observer")
            try:
                active = state.active_calls()
            finally:
                state.close()
            call_id = call_id_from(server.log, mark)
            mine = [c for c in active if c.call_id == call_id]
            assert mine and mine[0].dialplan == "demo", active
    rejected = backend.call(call_id_from_rejection(server.log, mark))
    assert rejected["disposition"] == "BUSY"
    assert rejected["hangup_cause"].startswith("503")


def call_id_from_rejection(log: str, after: int) -> str:
    for line in log[after:].splitlines():
        if "rejected: 503" in line:
            return line.split("call ", 1)[1].split(" ", 1)[0]
    raise AssertionError(f"server logged no 503 rejection:\n{log[after:]}")


def test_caller_hangs_up_mid_prompt(server: ServerProcess, backend: Backend,
                                    tmp_path: Path) -> None:  # fmt: skip
    mark = len(server.log)
    result = sipp.hangup_early(HOST, server.port, 1200, workdir=tmp_path)
    assert result.ok, result.describe()
    call = backend.call(call_id_from(server.log, mark))
    assert call["disposition"] == "ANSWERED"
    assert call["hangup_by"] == "caller"
    assert 1.0 < call["billsec"] < 5.0
    assert "Traceback" not in server.log[mark:] and "ERROR" not in server.log[mark:]
