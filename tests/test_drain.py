"""Graceful drain: admission while draining, the drain loop, `switchboard drain`, and the real
server drained by SIGTERM (and by the command) while sipp calls are in progress.

The end-to-end tests use `tests/dialplans/drain/drain_turn.yaml`: one question, then goodbye.
A caller who answers (FSDD digits) is done in a few seconds; a silent one would stay 20 s.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.cli import main
from app.config import load_config
from app.drain import StopSignals, drain_calls
from app.sip.admission import Admission
from app.sip.routes import RouteTable
from app.sip.sdp import parse_request
from app.store.db import open_engine
from app.store.models import Call
from app.store.queries import get_turns
from tests.conftest import REPO_ROOT
from tests.server_process import ServerProcess
from tests.sip import sipp
from tests.sip.ports import HOST
from tests.sip.rtp_pcap import build_digit_utterance, silence, write_rtp_pcap
from tests.sip.sipp import SippResult

NUMBER = "7000"
PLANS = REPO_ROOT / "tests" / "dialplans" / "drain"
SDP_PCMU = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
SDP_G722 = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 9\r\n"


def invite(user: str = NUMBER, sdp: str = SDP_PCMU) -> str:
    uri = f"sip:{user}@127.0.0.1"
    return (
        f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099\r\nFrom: <sip:c@x>;tag=1\r\n"
        f"To: <{uri}>\r\nCall-ID: drain-1\r\nCSeq: 1 INVITE\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    )


def write_routes(folder: Path) -> Path:
    path = folder / "routes.toml"
    path.write_text(f'[[route]]\nnumber = "{NUMBER}"\ndialplan = "drain_turn"\n')
    return path


# -- admission while draining -----------------------------------------------------------------


class Slots:
    """Cluster-wide cap stand-in: records who asked for a slot."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def reserve(self, call_id: str) -> bool:
        self.asked.append(call_id)
        return True


@pytest.fixture
def draining_admission(tmp_path: Path) -> tuple[Admission, Slots, int]:
    """A draining admission whose Retry-After comes from `[sip] retry_after_s` = 45."""
    config = load_config(None, {"SWITCHBOARD_SIP__RETRY_AFTER_S": "45"})
    routes = RouteTable.load(write_routes(tmp_path), {"drain_turn"})
    slots = Slots()
    admission = Admission(
        routes,
        config.sip.codecs,
        config.sip.max_calls,
        lambda: 0,
        retry_after_s=config.sip.retry_after_s,
        reserve=slots.reserve,
    )
    assert admission.decide(parse_request(invite())).status == 200  # open before the drain
    slots.asked.clear()
    admission.drain()
    return admission, slots, config.sip.retry_after_s


@pytest.mark.parametrize(
    ("user", "sdp"),
    [(NUMBER, SDP_PCMU), ("9999", SDP_PCMU), (NUMBER, SDP_G722)],
    ids=["routed", "unknown-number", "refused-codec"],
)
def test_draining_admission_answers_every_invite_503_with_retry_after(
    draining_admission: tuple[Admission, Slots, int], user: str, sdp: str
) -> None:
    admission, slots, retry_after_s = draining_admission
    decision = admission.decide(parse_request(invite(user, sdp)))
    assert (decision.status, decision.reason) == (503, "Service Unavailable")
    assert decision.headers == (("Retry-After", str(retry_after_s)),)
    assert retry_after_s == 45
    assert decision.dialled == user  # the refused call's record still says what was dialled
    assert admission.draining
    assert slots.asked == []  # a draining node takes no cluster-wide slot


def test_draining_admission_still_answers_other_methods_405(
    draining_admission: tuple[Admission, Slots, int],
) -> None:
    admission, _, _ = draining_admission
    options = invite().replace("INVITE", "OPTIONS", 1)
    assert admission.decide(parse_request(options)).status == 405


# -- the drain loop ---------------------------------------------------------------------------


class FakeServer:
    """Calls that end at given times after the drain begins (the real one: `app.server`)."""

    def __init__(self, ends_after_s: list[float]) -> None:
        self.ends_after_s = ends_after_s
        self.drain_began_at: float | None = None

    def begin_drain(self) -> None:
        self.drain_began_at = time.monotonic()

    def active_calls(self) -> int:
        if self.drain_began_at is None:
            return len(self.ends_after_s)
        elapsed = time.monotonic() - self.drain_began_at
        return sum(1 for end in self.ends_after_s if end > elapsed)


def test_drain_waits_for_calls_to_end_and_logs_progress_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeServer([0.3, 1.3])
    ticks: list[float] = []
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="switchboard"):
        left = drain_calls(
            server, 10, threading.Event(), lambda: ticks.append(1.0), progress_every_s=0.5
        )
    took = time.monotonic() - started
    assert left == 0
    assert server.drain_began_at is not None
    assert 1.2 < took < 2.0
    assert len(ticks) >= 5  # the health file is refreshed throughout
    progress = [r.getMessage() for r in caplog.records if "call(s) left" in r.getMessage()]
    assert 1 <= len(progress) <= 3, progress  # every 0.5 s, not every 0.2 s loop turn
    assert "2 call(s) in progress" in caplog.text
    assert "drained: no calls left" in caplog.text


def test_drain_gives_up_at_the_deadline() -> None:
    server = FakeServer([0.2, 60.0])
    started = time.monotonic()
    assert drain_calls(server, 1, threading.Event()) == 1
    assert 0.9 < time.monotonic() - started < 1.5


def test_drain_with_zero_timeout_does_not_wait() -> None:
    assert drain_calls(FakeServer([60.0, 60.0]), 0, threading.Event()) == 2


def test_second_signal_stops_the_drain_at_once() -> None:
    signals = StopSignals()
    signals.on_signal(signal.SIGTERM, None)
    assert signals.drain.is_set() and not signals.now.is_set()
    server = FakeServer([60.0])
    threading.Timer(0.3, signals.on_signal, (signal.SIGINT, None)).start()
    started = time.monotonic()
    assert drain_calls(server, 30, signals.now) == 1
    assert time.monotonic() - started < 1.0


# -- `switchboard drain` without a server -----------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("SWITCHBOARD_SERVER__DATA_DIR", str(folder))
    return folder


Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """`spawn(setup, *argv)`: a stand-in process that runs `setup`, then sleeps 30 s with
    `argv` on its command line; returned once `setup` has run. Killed after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(setup: str, *args: str) -> subprocess.Popen[str]:
        code = f"import signal, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(30)"
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_drain_without_pid_file_says_no_server(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["drain"]) == 2
    assert "no server running" in capsys.readouterr().err


def test_drain_with_pid_file_of_exited_process_says_stale(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (data_dir / "switchboard.pid").write_text(f"{gone.pid}\n")
    assert main(["drain"]) == 2
    err = capsys.readouterr().err
    assert "stale pid file" in err and f"process {gone.pid} is not running" in err


def test_drain_with_unreadable_pid_file_says_stale(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data_dir / "switchboard.pid").write_text("not-a-pid\n")
    assert main(["drain"]) == 2
    assert "stale pid file" in capsys.readouterr().err


def test_drain_never_signals_a_reused_pid(
    data_dir: Path, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pid file left by a crash may name a pid another program has now."""
    other = spawn("pass")
    (data_dir / "switchboard.pid").write_text(f"{other.pid}\n")
    assert main(["drain"]) == 2
    assert "is not a switchboard server" in capsys.readouterr().err
    time.sleep(0.3)
    assert other.poll() is None  # not signalled


def test_drain_times_out_when_the_server_does_not_exit(
    data_dir: Path, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck = spawn("signal.signal(signal.SIGTERM, signal.SIG_IGN)", "serve")
    (data_dir / "switchboard.pid").write_text(f"{stuck.pid}\n")
    assert main(["drain", "--timeout", "1"]) == 1
    assert "still running after 1 s" in capsys.readouterr().err
    assert stuck.poll() is None


def test_drain_no_wait_sends_sigterm_and_returns(
    data_dir: Path, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    server = spawn("pass", "serve")
    (data_dir / "switchboard.pid").write_text(f"{server.pid}\n")
    assert main(["drain", "--no-wait"]) == 0
    assert server.wait(5) == -signal.SIGTERM
    assert f"asked server {server.pid} to drain" in capsys.readouterr().out


# -- the real server --------------------------------------------------------------------------


def start_server(tmp_path: Path, **settings: str) -> ServerProcess:
    overrides = {
        "SWITCHBOARD_DIALPLANS__DIR": str(PLANS),
        "SWITCHBOARD_SIP__ROUTES": str(write_routes(tmp_path)),
        "SWITCHBOARD_SIP__MAX_CALLS": "4",
        **{f"SWITCHBOARD_{key.upper()}": value for key, value in settings.items()},
    }
    return ServerProcess.start(overrides, tmp_path / "data")


def wait_for(
    server: ServerProcess, condition: Callable[[], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f} s\n{server.log[-3000:]}")
        time.sleep(0.05)


def dial(server: ServerProcess, pcap: Path | None, workdir: Path) -> Callable[[], SippResult]:
    """Place a call on a thread that waits up to 25 s for the bot's BYE; the returned function
    joins the thread and gives sipp's result."""
    results: list[SippResult] = []

    def call() -> None:
        results.append(
            sipp.speech_call(
                HOST, server.port, pcap, wait_s=25, bye_from="server", service=NUMBER,
                workdir=workdir,
            )
        )  # fmt: skip

    thread = threading.Thread(target=call, daemon=True)
    thread.start()

    def join() -> SippResult:
        thread.join(60)
        assert results, "sipp call did not finish"
        return results[0]

    return join


def all_calls(data: Path) -> dict[str, dict]:
    """Every call record in the server's SQLite store, by Call-ID."""
    engine = open_engine(f"sqlite:///{data / 'switchboard.db'}")
    try:
        with Session(engine) as session:
            rows = session.scalars(select(Call)).all()
            calls = {
                row.call_id: {c.name: getattr(row, c.name) for c in Call.__table__.columns}
                for row in rows
            }
        for call_id, call in calls.items():
            call["turns"] = get_turns(engine, call_id)
        return calls
    finally:
        engine.dispose()


@pytest.mark.sip
def test_sigterm_refuses_new_calls_and_lets_active_ones_finish(
    tmp_path: Path, shared_data: Path
) -> None:
    server = start_server(tmp_path, server__drain_timeout_s="30", sip__retry_after_s="7")
    try:
        speech = silence(2500) + build_digit_utterance(shared_data, "jackson", "8145", seed=8145)
        pcap = write_rtp_pcap(speech + silence(1500), tmp_path / "caller.pcap", "PCMU")
        calls = [dial(server, pcap, tmp_path / f"call{i}") for i in range(2)]
        wait_for(server, lambda: server.log.count(" -> dialplan ") == 2, 15, "2 calls")
        time.sleep(1.0)  # both answered and talking
        server.process.send_signal(signal.SIGTERM)
        wait_for(server, lambda: "draining: new calls get 503" in server.log, 5, "drain")

        refused = sipp.expect_status(
            HOST, server.port, 503, service=NUMBER, workdir=tmp_path / "refused"
        )
        assert refused.ok, refused.describe()
        assert "Retry-After: 7" in refused.message_log.read_text(), refused.describe()
        assert "2 call(s) in progress" in server.log
        assert " ended (" not in server.log  # refused while both calls were still up

        for join in calls:
            result = join()
            assert result.ok, result.describe()  # the bot hung up, as its dialplan says
        assert server.process.wait(30) == 0, server.log[-3000:]
    finally:
        server.stop()
    assert "Traceback" not in server.log, server.log[-5000:]
    assert "drained: no calls left" in server.log

    records = all_calls(tmp_path / "data")  # flushed before the exit: no waiting here
    assert len(records) == 3, records
    answered = [c for c in records.values() if c["disposition"] == "ANSWERED"]
    assert len(answered) == 2, records
    for call in answered:
        assert call["hangup_by"] == "bot" and call["ended_at"] is not None, call
        assert call["dialplan"] == "drain_turn" and call["dst"] == NUMBER
        assert len(call["turns"]) == 1 and call["turns"][0]["transcript"], call
    (rejected,) = [c for c in records.values() if c["disposition"] != "ANSWERED"]
    assert rejected["disposition"] == "BUSY" and rejected["hangup_by"] == "system", rejected
    assert rejected["hangup_cause"] == "503 Service Unavailable"
    assert rejected["outcome"] == "rejected" and rejected["dst"] == NUMBER


@pytest.mark.sip
def test_drain_command_deadline_hangs_up_a_long_call(tmp_path: Path) -> None:
    server = start_server(tmp_path, server__drain_timeout_s="2")
    try:
        silent = dial(server, None, tmp_path / "call")
        wait_for(server, lambda: " -> dialplan " in server.log, 15, "the call")
        time.sleep(2.5)  # the health file (written every 2 s) counts the call
        drain = subprocess.run(
            [sys.executable, "-m", "app", "drain", "--timeout", "30"],
            cwd=REPO_ROOT, env=server.env, capture_output=True, text=True, timeout=40,
        )  # fmt: skip
        assert drain.returncode == 0, drain.stderr + server.log[-3000:]
        assert "1 call(s) left" in drain.stdout and "exited" in drain.stdout, drain.stdout
        result = silent()
        assert result.ok, result.describe()  # the server's BYE came, long before 25 s
        assert result.duration_s < 10
        assert server.process.wait(10) == 0, server.log[-3000:]
    finally:
        server.stop()
    assert "drain deadline (2 s) reached: hanging up 1 call(s)" in server.log
    assert "Traceback" not in server.log, server.log[-5000:]
    (call,) = all_calls(tmp_path / "data").values()
    assert call["disposition"] == "ANSWERED" and call["hangup_by"] == "system", call
    assert call["ended_at"] is not None


@pytest.mark.sip
def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    server = start_server(tmp_path, server__drain_timeout_s="60")
    try:
        silent = dial(server, None, tmp_path / "call")
        wait_for(server, lambda: " -> dialplan " in server.log, 15, "the call")
        server.process.send_signal(signal.SIGTERM)
        wait_for(server, lambda: "1 call(s) in progress" in server.log, 5, "drain")
        time.sleep(0.5)
        assert server.process.poll() is None  # draining: the call is not cut yet
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0, server.log[-3000:]
        assert time.monotonic() - stopped_at < 10  # not the 60 s of drain_timeout_s
        assert silent().ok  # the server's BYE
    finally:
        server.stop()
    assert "drain cut short: hanging up 1 call(s) now" in server.log
    (call,) = all_calls(tmp_path / "data").values()
    assert call["hangup_by"] == "system" and call["ended_at"] is not None, call
