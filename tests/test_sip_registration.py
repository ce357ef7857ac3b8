"""Outbound registration to trunks: the real `SipAgent` (in `tests.sip.agent_server`) against
sipp playing the trunk's registrar on loopback.

The registrar challenges the first REGISTER, checks the digest of the second, grants a short
binding and expects the refresh before it runs out; a refusing registrar (403, which PJSIP
gives up on, and 503, which PJSIP retries by itself) must be asked again after `retry_s`.
A call to the registered user must reach the agent through the trunk's account.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.eval.sipp import kill_group, start_sipp
from app.sip.registration import Registration
from tests.sip import sipp
from tests.sip.agent_process import AgentProcess, start_agent
from tests.sip.ports import HOST, free_port
from tests.sip.sipp import SIPP, render_scenario

pytestmark = pytest.mark.sip

USER = "alice"
PASSWORD = "pw-7f3kq-not-in-logs"
REALM = "trunk.test"
GRANTED_S = 8
"""What the registrar grants: less than the 300 s asked for, so the refresh must follow it."""
RETRY_S = 2
_LOGGED = re.compile(r"^REGISTER (?:(\S+) )?AT (\d+)(?: EXPIRES (\d*))?", re.MULTILINE)


@dataclass
class Registrar:
    """sipp as a registrar on 127.0.0.1:`port`; `registers()` reads what it logged so far."""

    proc: subprocess.Popen[str]
    port: int
    workdir: Path

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.port}"

    def log(self) -> str:
        path = self.workdir / "registrar_logs.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def registers(self) -> list[tuple[str, int, str]]:
        """(label, ms since sipp started, Expires header) per REGISTER received."""
        return [(m[1] or "", int(m[2]), m[3] or "") for m in _LOGGED.finditer(self.log())]

    def wait_registers(self, count: int, timeout_s: float) -> list[tuple[str, int, str]]:
        deadline = time.monotonic() + timeout_s
        while len(self.registers()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.registers()

    def finish(self, timeout_s: float) -> int | None:
        """sipp's exit code once its calls are done (None: killed after `timeout_s`)."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            return None

    def describe(self) -> str:
        errors = self.workdir / "registrar_errors.log"
        messages = self.workdir / "registrar_messages.log"
        return (
            f"registrar log:\n{self.log()}\nerrors:\n"
            f"{errors.read_text(errors='replace') if errors.exists() else ''}\n"
            f"messages: {messages}"
        )


def start_registrar(workdir: Path, scenario: str, values: dict, calls: int) -> Registrar:
    """sipp running `scenario` as a UAS for `calls` registrations (one Call-ID each)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = render_scenario(scenario, workdir, values)
    port = free_port()
    command = [
        SIPP, "-sf", str(path), "-t", "u1", "-i", HOST, "-p", str(port),
        "-m", str(calls), "-nostdin", "-timeout", "30s", "-timeout_error",
        "-trace_msg", "-message_file", str(workdir / "registrar_messages.log"),
        "-trace_err", "-error_file", str(workdir / "registrar_errors.log"),
        "-trace_logs", "-log_file", str(workdir / "registrar_logs.log"),
    ]  # fmt: skip
    proc = start_sipp(command, workdir)
    time.sleep(0.2)  # let sipp bind before the agent sends its first REGISTER
    assert proc.poll() is None, f"sipp registrar did not start: {proc.communicate()}"
    return Registrar(proc, port, workdir)


@pytest.fixture
def cleanup() -> Iterator[list]:
    """Agents and registrars to stop whatever the test's outcome."""
    running: list[AgentProcess | Registrar] = []
    yield running
    for item in running:
        if isinstance(item, AgentProcess):
            item.stop()
        elif item.proc.poll() is None:
            kill_group(item.proc)


def test_registers_with_digest_refreshes_and_takes_calls(tmp_path: Path, cleanup: list) -> None:
    registrar = start_registrar(
        tmp_path / "registrar",
        "uas_register",
        {
            "REALM": REALM, "NONCE": "b7e1c0de", "USER": USER, "PASSWORD": PASSWORD,
            "EXPIRES": GRANTED_S, "REFRESH_TIMEOUT_MS": GRANTED_S * 1000,
        },
        calls=1,
    )  # fmt: skip
    cleanup.append(registrar)
    trunk = Registration(
        name="carrier", registrar=registrar.uri, username=USER, password=PASSWORD,
        realm=REALM, expires_s=300, retry_s=RETRY_S,
    )  # fmt: skip
    agent = start_agent(tmp_path / "agent", registrations=[trunk])
    cleanup.append(agent)

    # challenge, authenticated REGISTER, refresh (re-challenged: PJSIP sends no cached
    # credentials), all within one sipp call that must end well
    code = registrar.finish(GRANTED_S + 10)
    assert code == 0, registrar.describe()
    log = registrar.log()
    assert "AUTH OK" in log and "REFRESH OK" in log and "AUTH BAD" not in log, log
    registers = registrar.registers()
    assert [label for label, _, _ in registers][:3] == ["initial", "authenticated", "refresh"]
    assert registers[0][2] == "300", registers  # we ask for expires_s
    assert f"CONTACT sip:{USER}@{HOST}:{agent.port}\n" in log  # calls come to our SIP port
    granted_at, refreshed_at = registers[1][1], registers[2][1]
    # refreshed before the granted binding ran out, and not right away
    assert 2000 < refreshed_at - granted_at < GRANTED_S * 1000, registers

    status = agent.registration_status()
    assert status == {"carrier": {"registered": True, "code": 200, "expires": GRANTED_S}}
    agent_log = agent.log()
    assert "registration carrier: registered until" in agent_log
    assert PASSWORD not in agent_log

    # the trunk sends a call to our registered user: it reaches the agent like any other
    mark = agent.mark()
    call = sipp.speech_call(
        HOST, agent.port, None, wait_s=1, bye_from="caller", service=USER,
        workdir=tmp_path / "caller",
    )  # fmt: skip
    assert call.ok, call.describe()
    event = agent.wait_event("call", after=mark)
    assert event["dialled"] == USER
    agent.wait_event("ended", call_id=event["call_id"], after=mark)
    assert "incoming call on trunk account carrier" in agent.log()


@pytest.mark.parametrize(("status", "reason"), [(403, "Forbidden"), (503, "Service Unavailable")])
def test_refused_registration_is_retried_after_retry_s(
    tmp_path: Path, cleanup: list, status: int, reason: str
) -> None:
    """403 is final for PJSIP, so the agent asks again itself; 503 PJSIP retries. Either way
    the next REGISTER comes `retry_s` later, and the failure is logged with its status."""
    registrar = start_registrar(
        tmp_path / "registrar", "uas_register_refuse", {"STATUS": status, "REASON": reason},
        calls=2,
    )  # fmt: skip
    cleanup.append(registrar)
    trunk = Registration(
        name="carrier", registrar=registrar.uri, username=USER, password=PASSWORD,
        retry_s=RETRY_S,
    )  # fmt: skip
    agent = start_agent(tmp_path / "agent", registrations=[trunk])
    cleanup.append(agent)

    registers = registrar.wait_registers(2, timeout_s=RETRY_S + 5)
    assert len(registers) >= 2, registrar.describe()
    gap_ms = registers[1][1] - registers[0][1]
    assert RETRY_S * 1000 - 200 <= gap_ms <= RETRY_S * 1000 + 1500, registers
    assert registrar.finish(5) == 0, registrar.describe()

    assert agent.registration_status() == {
        "carrier": {"registered": False, "code": status, "expires": 0}
    }
    agent_log = agent.log()
    failure = f"registration carrier: failed with {status} {reason}, next retry in {RETRY_S}"
    assert agent_log.count(failure) >= 1, agent_log[-3000:]
    assert PASSWORD not in agent_log


def test_registration_settings_are_checked() -> None:
    """A bad trunk entry is refused when it is built, and the password stays out of reprs."""
    trunk = Registration(name="carrier", registrar="sip:pbx.example.com:5070", username="u",
                         password=PASSWORD, transport="tls")  # fmt: skip
    assert PASSWORD not in repr(trunk)
    assert trunk.aor == "sip:u@pbx.example.com"
    assert trunk.registrar_uri() == "sip:pbx.example.com:5070;transport=tls"
    with pytest.raises(ValueError, match="sip: or sips: URI"):
        Registration(name="x", registrar="pbx.example.com", username="u", password="p")
    with pytest.raises(ValueError, match="transport must be"):
        Registration(name="x", registrar="sip:pbx", username="u", password="p", transport="ws")
    with pytest.raises(ValueError, match="needs transport tls"):
        Registration(name="x", registrar="sips:pbx", username="u", password="p")
    with pytest.raises(ValueError, match="retry_s"):
        Registration(name="x", registrar="sip:pbx", username="u", password="p", retry_s=0)


def test_registration_account_settings() -> None:
    """What PJSIP is told (a pjsua2 AccountConfig is a plain struct: no endpoint needed)."""
    trunk = Registration(name="carrier", registrar="sip:10.0.0.5", username="u", password="p",
                         realm="carrier.example", expires_s=600, retry_s=45,
                         contact_user="inbound")  # fmt: skip
    cfg = trunk.account_config(transport_id=2, local_name="192.0.2.1:5062")
    assert cfg.idUri == "sip:u@10.0.0.5"
    reg = cfg.regConfig
    assert reg.registrarUri == "sip:10.0.0.5" and reg.registerOnAdd
    assert (reg.timeoutSec, reg.delayBeforeRefreshSec) == (600, 5)
    assert (reg.firstRetryIntervalSec, reg.retryIntervalSec, reg.randomRetryIntervalSec) == (
        45, 45, 4,
    )  # fmt: skip
    (cred,) = cfg.sipConfig.authCreds
    assert (cred.scheme, cred.realm, cred.username, cred.data) == (
        "digest", "carrier.example", "u", "p",
    )  # fmt: skip
    assert cfg.sipConfig.transportId == 2
    assert cfg.sipConfig.contactForced == "<sip:inbound@192.0.2.1:5062;transport=udp>"
