"""sipp as the signalling half of a scripted caller: one sipp process per call.

The scenario (`uac_eval.xml`, shipped beside this module) is a template: `{{NAME}}` placeholders
(the RTP endpoint's address, codec, payload types, the longest wait) are filled in per call,
because sipp reads them when it loads the file. The SDP offer names our Python RTP endpoint
(`app.eval.rtp`), so sipp never touches the media.

The caller hangs up when the script says so, which sipp cannot know in advance: `SippCall.
hang_up` sends sipp a NOTIFY with the call's Call-ID on its own SIP port, which the scenario
takes as the signal to send the BYE. The Call-ID is ours (`-cid_str`), so the call's records
can be found under it: the server stores calls under the SIP Call-ID.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SIPP = "sipp"
TEMPLATE = Path(__file__).with_name("uac_eval.xml")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_STATUS = re.compile(r"^SIP/2\.0 ([2-6]\d\d)(?: ([^\r\n]*))?$", re.MULTILINE)
SETTLE_S = 0.3
"""The hang-up signal waits this long after the answer: sipp must have sent its ACK and be
waiting in the scenario's final receive, or the NOTIFY would be an unexpected message."""


class SippError(RuntimeError):
    """sipp is missing or could not be started."""


def check_sipp() -> None:
    if shutil.which(SIPP) is None:
        raise SippError("sipp not found on PATH: install the 'sip-tester' package (apt-get)")


def start_sipp(command: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start sipp in its own process group (see `kill_group`), output captured as text."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group sipp was started in, ignoring a finished one."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def local_address(host: str, port: int) -> str:
    """The local IP address that packets to host:port leave from (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, port))
        except OSError as exc:
            raise SippError(f"cannot reach {host}:{port}: {exc}") from None
        return sock.getsockname()[0]


def render_scenario(values: dict[str, object], folder: Path) -> Path:
    """The scenario template with its placeholders filled in, written into `folder`."""
    text = TEMPLATE.read_text()

    def fill(match: re.Match[str]) -> str:
        return str(values[match.group(1)])

    path = folder / TEMPLATE.name
    path.write_text(_PLACEHOLDER.sub(fill, text))
    return path


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _free_udp_block(host: str, count: int = 4) -> int:
    """An even port with `count` free UDP ports from it: sipp binds media ports even unused."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000, 2)
        socks = []
        try:
            for offset in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((host, base + offset))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise SippError(f"no block of {count} free UDP ports on {host}")


@dataclass
class SippOutcome:
    """How sipp's side of a call went."""

    exit_code: int | None
    timed_out: bool
    answered: bool
    ended_by: str
    """Who hung up: "bot" (its BYE), "caller" (ours), or "" (neither: the call failed before or
    during set-up)."""
    errors: str
    """The end of sipp's stderr and error log, when it did not exit 0."""
    folder: Path
    final_status: str = ""
    """The last final response sipp received ("404 Not Found"), "" if none."""

    def refusal(self) -> str:
        """Why the call was not answered, in a few words."""
        if self.final_status and not self.final_status.startswith("2"):
            return f"refused with {self.final_status}"
        if not self.final_status:
            return "no final response to the INVITE (is the server running, on that port?)"
        return f"sipp exit {self.exit_code}: {self.errors[-300:]}"


class SippCall:
    """One running sipp process placing one call."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        number: str,
        call_id: str,
        local_ip: str,
        rtp_port: int,
        codec: str,
        payload_type: int,
        dtmf_payload_type: int,
        wait_s: float,
        folder: Path,
    ) -> None:
        check_sipp()
        folder.mkdir(parents=True, exist_ok=True)
        self.call_id = call_id
        self.local_ip = local_ip
        self.folder = folder
        self.wait_s = wait_s
        values = {
            "RTP_IP": local_ip,
            "RTP_PORT": rtp_port,
            "CODEC": codec,
            "PT": payload_type,
            "DTMF_PT": dtmf_payload_type,
            "WAIT_MS": int(wait_s * 1000),
        }
        scenario = render_scenario(values, folder)
        self.sip_port = _free_udp_port(local_ip)
        self.action_log = folder / "actions.log"
        self.error_log = folder / "errors.log"
        command = [
            SIPP, f"{host}:{port}", "-sf", str(scenario), "-t", "u1",
            "-i", local_ip, "-p", str(self.sip_port),
            "-mi", local_ip, "-mp", str(_free_udp_block(local_ip)),
            "-s", number, "-m", "1", "-l", "1", "-nostdin",
            "-cid_str", call_id.replace("%", "%%"),
            "-timeout", f"{max(1, round(wait_s + 15))}s", "-timeout_error",
            "-trace_msg", "-message_file", str(folder / "messages.log"),
            "-trace_err", "-error_file", str(self.error_log),
            "-trace_logs", "-log_file", str(self.action_log),
        ]  # fmt: skip
        try:
            self.process = start_sipp(command, folder)
        except OSError as exc:
            raise SippError(f"cannot start sipp: {exc}") from None
        self.hangup_sent = False

    def running(self) -> bool:
        return self.process.poll() is None

    def hang_up(self) -> None:
        """Tell sipp to send the BYE (once; nothing if sipp has already finished)."""
        if self.hangup_sent or not self.running():
            return
        self.hangup_sent = True
        branch = f"z9hG4bK-eval-{random.getrandbits(48):x}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.local_ip, 0))
            own = sock.getsockname()[1]
            message = (
                f"NOTIFY sip:eval@{self.local_ip}:{self.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.local_ip}:{own};branch={branch}\r\n"
                f"From: <sip:runner@{self.local_ip}>;tag=eval-runner\r\n"
                f"To: <sip:eval@{self.local_ip}>\r\n"
                f"Call-ID: {self.call_id}\r\n"
                "CSeq: 1 NOTIFY\r\n"
                "Event: switchboard-eval-hangup\r\n"
                "Max-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                sock.sendto(message.encode(), (self.local_ip, self.sip_port))

    def wait(self, timeout: float) -> SippOutcome:
        """Wait for sipp to finish (killed after `timeout`) and say how the call went."""
        timed_out = False
        try:
            _, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            _, stderr = self.process.communicate()
            timed_out = True
        logged = self.action_log.read_text(errors="replace") if self.action_log.exists() else ""
        ended_by = "bot" if "SERVER-BYE" in logged else "caller" if "CALLER-BYE" in logged else ""
        errors = ""
        if self.process.returncode != 0 or timed_out:
            log = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
            errors = " ".join(f"{stderr.strip()[-400:]} {log.strip()[-600:]}".split())
        messages = self.folder / "messages.log"
        text = messages.read_text(errors="replace") if messages.exists() else ""
        statuses = [" ".join(m.groups("")).strip() for m in _STATUS.finditer(text)]
        return SippOutcome(
            self.process.returncode,
            timed_out,
            "ANSWERED" in logged,
            ended_by,
            errors,
            self.folder,
            statuses[-1] if statuses else "",
        )

    def kill(self) -> None:
        kill_group(self.process)


def wait_answered(call: SippCall, answered_at: float | None) -> None:
    """Sleep until `SETTLE_S` after the answer (the first RTP packet), at most that long."""
    if answered_at is not None:
        delay = answered_at + SETTLE_S - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, SETTLE_S))
