"""The example dialplans and every step kind over real calls.

`switchboard serve` runs as a process with the three examples (bank, appointments, survey) and
small test dialplans; sipp dials it, speaking FSDD digits (real human speech) and pressing keys
as RFC 4733 events and as SIP INFO; baresip is the caller that follows a REFER. Webhooks go to a
local HTTP backend, the LLM step to a local OpenAI-compatible server, transfers to a sipp phone.
The call records (SQLite) are then read back: variables, step outcomes, turns, CDR.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.store.db import open_engine
from app.store.queries import get_call, get_events, get_turns, get_variables
from app.tts.espeak import EspeakEngine
from tests.conftest import REPO_ROOT
from tests.http_backends import FakeChatServer, JsonBackend, Reply
from tests.server_process import ServerProcess
from tests.sip import sipp
from tests.sip.baresip import run_baresip_call
from tests.sip.ports import HOST
from tests.sip.rtp_pcap import build_digit_utterance, silence
from tests.sip.sipp import InfoKey
from tests.sip.target import start_target
from tests.sip.wavfile import write_wav

pytestmark = pytest.mark.sip

SPEAKER = "jackson"
MARGIN_MS = 1500  # the caller answers this long after the bot's prompts should have ended
E2E_PLANS = REPO_ROOT / "tests" / "dialplans" / "e2e"
ROUTES = {
    "2001": "bank",
    "2002": "appointments",
    "2003": "survey",
    "3001": "transfer_none",
    "3002": "transfer_bridge",
    "3003": "helpdesk",
    "4001": "webhook_errors",
    "4002": "webhook_errors",
    "4003": "webhook_errors",
    "5001": "reload_probe",
}


# -- set-up -----------------------------------------------------------------------------------


def install_dialplans(folder: Path, variables: dict[str, str]) -> tuple[Path, Path]:
    """The examples and the e2e plans in `folder`, with site `variables` set as an operator
    would edit them; plus a routes file. Returns (dialplans dir, routes file)."""
    plans = folder / "dialplans"
    plans.mkdir(parents=True)
    for source in [*sorted((REPO_ROOT / "dialplans").glob("*.yaml")), *E2E_PLANS.glob("*.yaml")]:
        text = source.read_text()
        for name, value in variables.items():
            text = re.sub(rf'(?m)^(  {name}: )".*"$', rf'\g<1>"{value}"', text)
        (plans / source.name).write_text(text)
    routes = folder / "routes.toml"
    routes.write_text(
        "".join(f'[[route]]\nnumber = "{n}"\ndialplan = "{p}"\n\n' for n, p in ROUTES.items())
    )
    return plans, routes


def start_server(workdir: Path, plans: Path, routes: Path) -> ServerProcess:
    overrides = {
        "SWITCHBOARD_DIALPLANS__DIR": str(plans),
        "SWITCHBOARD_SIP__ROUTES": str(routes),
        "SWITCHBOARD_SIP__MAX_CALLS": "2",
    }
    return ServerProcess.start(overrides, workdir)


def stop_server(server: ServerProcess) -> None:
    code = server.stop()
    assert code == 0, f"server exited with {code}:\n{server.log[-3000:]}"
    assert "Traceback" not in server.log, server.log[-5000:]


class Records:
    """Reads the server's call records (SQLite in its data dir)."""

    def __init__(self, workdir: Path) -> None:
        self.engine = open_engine(f"sqlite:///{workdir / 'switchboard.db'}")

    def call(self, call_id: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            row = get_call(self.engine, call_id)
            if row and row["ended_at"] is not None:
                time.sleep(0.5)  # the last variables and steps are written in the same batches
                return get_call(self.engine, call_id)
            if time.monotonic() > deadline:
                raise AssertionError(f"no ended call record for {call_id}: {row}")
            time.sleep(0.2)

    def variables(self, call_id: str) -> dict:
        return get_variables(self.engine, call_id)

    def steps(self, call_id: str) -> list[dict]:
        """The outcomes of steps that reach outside the call (webhook, llm, transfer ...)."""
        return [e for e in self.events(call_id) if e["kind"] not in _CALL_EVENT_KINDS]

    def events(self, call_id: str) -> list[dict]:
        return get_events(self.engine, call_id)

    def turns(self, call_id: str) -> list[dict]:
        return get_turns(self.engine, call_id)


_CALL_EVENT_KINDS = {"dtmf", "fallback", "error"}


def call_id_from(log: str, after: int, dialled: str) -> str:
    for line in log[after:].splitlines():
        if " -> dialplan " in line and f" to {dialled} " in line:
            return line.split("call ", 1)[1].split(" ", 1)[0]
    raise AssertionError(f"server logged no accepted call to {dialled}:\n{log[after:]}")


@pytest.fixture(scope="module")
def tts() -> EspeakEngine:
    return EspeakEngine()


def spoken_ms(tts: EspeakEngine, *texts: str) -> int:
    """How long the bot takes to say `texts` (the server uses the same voice and pace)."""
    samples = sum(len(b"".join(tts.synthesize(text))) // 2 for text in texts)
    return samples * 1000 // tts.sample_rate


def digits_speech(shared_data: Path, digits: str) -> bytes:
    """FSDD speech of `digits`. The strings used here are ones the default recogniser gets
    right (see the README on its accuracy): these tests are about the call flow, and
    recognition accuracy is measured by the benchmarks."""
    return build_digit_utterance(shared_data, SPEAKER, digits, seed=int(digits))


def prompt(plan: str, step: str, key: str | None = None) -> str:
    """A prompt's text as written in the example (only prompts without variables)."""
    import yaml

    document = yaml.safe_load((REPO_ROOT / "dialplans" / f"{plan}.yaml").read_text())
    body = document["steps"][step]
    text = (
        body[key] if key else next(body[k] for k in ("say", "ask", "menu", "record") if k in body)
    )
    assert "{" not in text, text
    return " ".join(text.split())


# -- the examples, on one server --------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("dialplan-site")
    with JsonBackend() as backend, FakeChatServer() as chat:
        plans, routes = install_dialplans(
            workdir,
            {"backend": backend.url, "llm_url": chat.url, "agent_uri": "sip:nobody@127.0.0.1:9"},
        )
        server = start_server(workdir, plans, routes)
        try:
            yield {"server": server, "backend": backend, "chat": chat, "records": Records(workdir),
                   "workdir": workdir}  # fmt: skip
        finally:
            stop_server(server)


def test_bank_account_by_voice_pin_by_rfc4733_menu_by_sip_info(site, tts, shared_data, tmp_path):
    server, backend, records = site["server"], site["backend"], site["records"]
    account = "9075"
    backend.route(
        "POST",
        f"/accounts/{account}/balance",
        Reply.json({"status": "ok", "balance": 1250, "currency": "dollars"}),
    )
    speech_at = spoken_ms(tts, prompt("bank", "greet"), prompt("bank", "ask_account")) + MARGIN_MS
    speech = digits_speech(shared_data, account)
    pin_at = speech_at + len(speech) // 16 + 2500
    pin = [(pin_at + 300 * i, key) for i, key in enumerate("2468#")]
    menu_at = pin_at + 9000  # after the balance is read out: "4" = goodbye
    mark = len(server.log)
    result = sipp.dtmf_call(
        HOST, server.port, service="2001",
        speech=silence(speech_at) + speech + silence(menu_at - speech_at - len(speech) // 16),
        rfc2833=pin, info=[InfoKey(at_ms=menu_at, key="4")],
        wait_s=25, bye_from="server", workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe() + server.log[mark:][-3000:]
    call_id = call_id_from(server.log, mark, "2001")
    call = records.call(call_id)
    assert (call["dialplan"], call["hangup_by"], call["disposition"]) == ("bank", "bot", "ANSWERED")
    assert call["outcome"] == "contained"
    assert len(call["dialplan_version"]) == 64
    variables = records.variables(call_id)
    assert variables["account"] == account, records.turns(call_id)
    assert variables["pin"] == "[redacted]"  # sensitive: never stored
    assert (variables["status"], variables["balance"]) == ("ok", "1250")
    assert variables.get("question") is None
    (request,) = backend.requests_to(f"/accounts/{account}/balance")
    assert request.json == {"account": account, "pin": "2468"}  # the backend does get the PIN
    assert request.headers["x-request-id"] == call_id
    steps = [(s["step"], s["kind"], s["ok"]) for s in records.steps(call_id)]
    assert steps == [("lookup", "webhook", True)]
    keys = [(e["step"], e["detail"]) for e in records.events(call_id) if e["kind"] == "dtmf"]
    assert keys == [("ask_pin", "[redacted]"), ("anything_else", "4")]  # the PIN never stored
    turns = records.turns(call_id)
    assert {t["result"] for t in turns} == {"matched"}
    assert [t["step"] for t in turns] == ["ask_account", "ask_pin", "anything_else"], [
        (t["step"], t["transcript"], t["engine"], str(t["asr_final_at"])) for t in turns
    ]
    assert turns[1]["engine"] == "dtmf" and turns[1]["transcript"] == "[redacted]"
    assert (turns[2]["engine"], turns[2]["transcript"]) == ("dtmf", "4")


@pytest.mark.parametrize(
    ("number", "reply", "error"),
    [
        ("4001", Reply.error(500), "HTTP 500"),
        ("4002", Reply.hang(), "timed out after 1.5 s (2 attempts)"),
        ("4003", Reply.malformed(), "response is not JSON"),
    ],
)
def test_webhook_failure_takes_on_error_and_is_recorded(site, tmp_path, number, reply, error):
    """500, a backend that never answers, and malformed JSON: the call goes on along
    `on_error` (the apology is played, then the bot hangs up) and the error is recorded."""
    server, backend, records = site["server"], site["backend"], site["records"]
    backend.route("GET", f"/check/{number}", reply)
    mark = len(server.log)
    result = sipp.dtmf_call(
        HOST, server.port, service=number, wait_s=20, bye_from="server", workdir=tmp_path
    )
    assert result.ok, result.describe() + server.log[mark:][-3000:]
    call_id = call_id_from(server.log, mark, number)
    call = records.call(call_id)
    assert (call["hangup_by"], call["disposition"]) == ("bot", "ANSWERED")
    (step,) = records.steps(call_id)
    assert (step["step"], step["kind"], step["ok"]) == ("lookup", "webhook", False)
    assert step["detail"].startswith(f"GET {backend.url}/check/{number}: ")
    assert error in step["detail"]
    assert "answer" not in records.variables(call_id)
    log = server.log[mark:]
    assert "Traceback" not in log


def test_appointments_date_by_keys_time_by_info_menu_by_voice(site, tts, shared_data, tmp_path):
    server, backend, records = site["server"], site["backend"], site["records"]
    today = dt.date.today()
    day = dt.date(today.year, 12, 3)
    if day < today:
        day = dt.date(today.year + 1, 12, 3)
    backend.route("GET", "/slots", Reply.json({"free": False, "nearest": "11:00"}))
    backend.route("POST", "/bookings", Reply.json({"reference": 5150}))
    date_at = spoken_ms(tts, prompt("appointments", "ask_day")) + 2000
    date_keys = [(date_at + 250 * i, k) for i, k in enumerate("1203#")]
    time_at = date_at + 3000
    offer = "10:30 is taken. The nearest free time is 11:00. To take it, press 1 or say take it. To choose another time, press 2 or say another time."  # noqa: E501
    speech_at = time_at + 600 + spoken_ms(tts, offer) + MARGIN_MS + 1500
    one = digits_speech(shared_data, "1")
    confirm_at = speech_at + len(one) // 16 + 2500
    mark = len(server.log)
    result = sipp.dtmf_call(
        HOST, server.port, service="2002",
        speech=silence(speech_at) + one + silence(confirm_at - speech_at - len(one) // 16 + 12000),
        rfc2833=[*date_keys, (confirm_at, "1")],
        info=[InfoKey(at_ms=time_at + 150 * i, key=k) for i, k in enumerate("1030#")],
        wait_s=50, bye_from="server", workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe() + server.log[mark:][-3000:]
    call_id = call_id_from(server.log, mark, "2002")
    records.call(call_id)
    variables = records.variables(call_id)
    assert variables["day"] == day.isoformat()
    assert (variables["time"], variables["nearest"], variables["confirmed"]) == (
        "11:00",
        "11:00",
        "yes",
    )
    assert variables["booking"] == "5150"
    (slots,) = backend.requests_to("/slots")
    assert slots.query == {"day": [day.isoformat()], "time": ["10:30"]}
    (booking,) = backend.requests_to("/bookings")
    assert booking.json["day"] == day.isoformat() and booking.json["time"] == "11:00"
    turns = records.turns(call_id)
    menu = next(t for t in turns if t["step"] == "offer_nearest")
    assert menu["engine"] == "pocketsphinx" and "one" in menu["transcript"]


def test_survey_scores_by_voice_and_keys_and_a_recorded_comment(site, tts, shared_data, tmp_path):
    server, records, workdir = site["server"], site["records"], site["workdir"]
    four = digits_speech(shared_data, "4")
    speech_at = spoken_ms(tts, prompt("survey", "intro"), prompt("survey", "overall")) + MARGIN_MS
    keys_at = speech_at + len(four) // 16 + 2500
    comment_at = keys_at + 1500 + spoken_ms(tts, prompt("survey", "comment")) + MARGIN_MS
    comment = digits_speech(shared_data, "3141")
    audio = (
        silence(speech_at) + four + silence(comment_at - speech_at - len(four) // 16)
        + comment + silence(6000)
    )  # fmt: skip
    mark = len(server.log)
    result = sipp.dtmf_call(
        HOST, server.port, service="2003", speech=audio,
        rfc2833=[(keys_at, "5"), (keys_at + 600, "1")],
        info=[InfoKey(at_ms=keys_at + 300, key="3", content_type="application/dtmf")],
        wait_s=25, bye_from="server", workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe() + server.log[mark:][-3000:]
    call_id = call_id_from(server.log, mark, "2003")
    records.call(call_id)
    variables = records.variables(call_id)
    assert (variables["overall"], variables["helpful"], variables["recommend"]) == ("4", "5", "3")
    assert variables["wants_comment"] == "comment"
    message = Path(variables["comment_file"])
    assert message.is_file() and workdir in message.parents
    with wave.open(str(message)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    assert len(comment) / 16000 < seconds < len(comment) / 16000 + 6
    (recording,) = [s for s in records.steps(call_id) if s["kind"] == "record"]
    assert recording["ok"]


def test_llm_step_answers_an_open_question(site, tts, shared_data, tmp_path):
    server, chat, records = site["server"], site["chat"], site["records"]
    speech_at = spoken_ms(tts, "What is your question?") + MARGIN_MS
    question = digits_speech(shared_data, "72")
    mark = len(server.log)
    result = sipp.dtmf_call(
        HOST, server.port, service="3003",
        speech=silence(speech_at) + question + silence(15000), wait_s=20, bye_from="server",
        workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe() + server.log[mark:][-3000:]
    call_id = call_id_from(server.log, mark, "3003")
    records.call(call_id)
    variables = records.variables(call_id)
    asked = chat.last_messages
    assert asked[0] == {"role": "system", "content": "Answer in one short sentence."}
    assert asked[-1] == {"role": "user", "content": variables["question"]}
    assert variables["answer"] and variables["question"] in variables["answer"]
    assert [s["kind"] for s in records.steps(call_id)] == ["llm"]


def test_an_invalid_dialplan_keeps_the_server_from_starting(tmp_path):
    plans, routes = install_dialplans(tmp_path, {})
    shutil.copy(REPO_ROOT / "tests" / "dialplans" / "broken" / "unreachable.yaml", plans)
    env = {
        **os.environ,
        "SWITCHBOARD_DIALPLANS__DIR": str(plans),
        "SWITCHBOARD_SIP__ROUTES": str(routes),
        "SWITCHBOARD_SERVER__DATA_DIR": str(tmp_path),
        "SWITCHBOARD_STORE__URL": f"sqlite:///{tmp_path / 'calls.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot start: invalid dialplan" in done.stderr + done.stdout
    assert "unreachable.yaml:6:3: step 'orphan' can never be reached" in done.stderr + done.stdout


# -- transfers: a server per test, since the target phone's port goes into the dialplan -------


@pytest.fixture
def transfer_site(tmp_path: Path) -> Iterator:
    servers: list[ServerProcess] = []

    def start(agent_uri: str) -> tuple[ServerProcess, Records]:
        workdir = tmp_path / f"site{len(servers)}"
        plans, routes = install_dialplans(workdir, {"agent_uri": agent_uri})
        server = start_server(workdir, plans, routes)
        servers.append(server)
        return server, Records(workdir)

    yield start
    for server in servers:
        stop_server(server)


def test_transfer_by_refer_reaches_the_agent_phone(transfer_site, tmp_path):
    """baresip follows the REFER and calls the agent phone (sipp) itself."""
    target = start_target(tmp_path / "agent", hangup_after_ms=2000)
    server, records = transfer_site(target.uri("agent"))
    speech = tmp_path / "silence.wav"
    write_wav(speech, silence(1000), 8000)
    mark = len(server.log)
    outcome = run_baresip_call(server.uri("3001"), speech, "PCMU", 25, tmp_path / "caller")
    assert outcome.established, outcome.describe()
    called = target.wait_called(15)
    assert called is not None, server.log[mark:][-3000:]
    assert called.request_uri.startswith("sip:agent@")
    call_id = call_id_from(server.log, mark, "3001")
    call = records.call(call_id)
    assert call["hangup_by"] == "transfer" and call["outcome"] == "transferred"
    (step,) = records.steps(call_id)
    assert (step["kind"], step["ok"]) == ("transfer", True) and step["detail"].endswith("by refer")


def test_refer_rejected_takes_on_error(transfer_site, tmp_path):
    server, records = transfer_site("sip:agent@127.0.0.1:9")
    mark = len(server.log)
    result = sipp.transfer_call(
        HOST, server.port, service="3001", refer="reject", refer_status=603,
        wait_s=15, bye_from="server", workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe() + server.log[mark:][-3000:]
    call_id = call_id_from(server.log, mark, "3001")
    call = records.call(call_id)
    assert call["hangup_by"] == "bot"
    (step,) = records.steps(call_id)
    assert (step["kind"], step["ok"]) == ("transfer", False)
    assert "603" in step["detail"]


def test_refer_rejected_falls_back_to_a_bridge(transfer_site, tmp_path):
    target = start_target(tmp_path / "agent")
    server, records = transfer_site(target.uri("agent"))
    mark = len(server.log)
    result = sipp.transfer_call(
        HOST, server.port, service="3002", refer="reject", refer_status=405,
        refer_reason="Method Not Allowed", wait_s=4, bye_from="caller", workdir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.describe() + server.log[mark:][-3000:]
    assert target.wait_called(10) is not None
    assert target.wait_bye(15), "the agent leg was not hung up after the caller left"
    call_id = call_id_from(server.log, mark, "3002")
    records.call(call_id)
    (step,) = records.steps(call_id)
    assert (step["kind"], step["ok"]) == ("transfer", True) and step["detail"].endswith("by bridge")


# -- reloading ---------------------------------------------------------------------------------


def test_reload_swaps_dialplans_and_calls_in_progress_keep_theirs(tmp_path):
    """`switchboard dialplan reload` while a call is on the plan: that call finishes on the
    version it started with, the next call gets the new one; a broken edit is refused and the
    running set stays."""
    workdir = tmp_path / "site"
    plans, routes = install_dialplans(workdir, {})
    probe = plans / "reload_probe.yaml"
    old_version = hashlib.sha256(probe.read_bytes()).hexdigest()
    server = start_server(workdir, plans, routes)
    records = Records(workdir)
    env = {**os.environ, **{k: v for k, v in server.env.items() if k.startswith("SWITCHBOARD_")}}

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "dialplan", "reload"], env=env, cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    try:
        mark = len(server.log)
        first: dict = {}
        caller = threading.Thread(
            target=lambda: first.update(
                result=sipp.dtmf_call(
                    HOST,
                    server.port,
                    service="5001",
                    rfc2833=[(6000, "7")],
                    wait_s=15,
                    bye_from="server",
                    workdir=tmp_path / "a",
                )
            )
        )
        caller.start()
        deadline = time.monotonic() + 10
        while " -> dialplan reload_probe" not in server.log[mark:]:
            assert time.monotonic() < deadline, server.log[mark:]
            time.sleep(0.1)
        first_id = call_id_from(server.log, mark, "5001")
        probe.write_text(probe.read_text().replace("Version one", "Version two"))
        new_version = hashlib.sha256(probe.read_bytes()).hexdigest()
        done = reload()
        assert done.returncode == 0, done.stderr
        assert "asked server" in done.stdout
        deadline = time.monotonic() + 10
        while "dialplans reloaded" not in server.log[mark:]:
            assert time.monotonic() < deadline, server.log[mark:]
            time.sleep(0.1)
        assert "changed or new: reload_probe" in server.log[mark:]

        mark2 = len(server.log)
        second = sipp.dtmf_call(
            HOST, server.port, service="5001", rfc2833=[(3000, "8")], wait_s=15,
            bye_from="server", workdir=tmp_path / "b",
        )  # fmt: skip
        caller.join(60)
        assert first["result"].ok, first["result"].describe()
        assert second.ok, second.describe()
        second_id = call_id_from(server.log, mark2, "5001")
        assert records.call(first_id)["dialplan_version"] == old_version
        assert records.variables(first_id)["key"] == "7"  # the first call went on to the end
        assert records.call(second_id)["dialplan_version"] == new_version

        probe.write_text("start: nowhere\nsteps: {}\n")
        assert reload().returncode == 1  # the CLI checks first and says why
        os.kill(server.process.pid, signal.SIGHUP)  # the server checks too
        deadline = time.monotonic() + 10
        while "dialplan reload refused" not in server.log[mark2:]:
            assert time.monotonic() < deadline, server.log[mark2:]
            time.sleep(0.1)
    finally:
        stop_server(server)
