"""Drive sipp against a SIP server on loopback: one call per run, bounded in time.

The XML scenarios in `scenarios/` are templates: `{{NAME}}` placeholders (codec, pcap path,
pauses, expected status) are filled in here and optional `<!-- BEGIN x -->...<!-- END x -->`
blocks are kept or dropped, because sipp reads `play_pcap_audio` paths and expected statuses
when it loads the file, not per call. Pass/fail is sipp's exit code (0: the call followed the
scenario); the result also carries what was seen on the wire and the log paths for messages.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.sip.ports import HOST, free_port, free_udp_block

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = "sipp"
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8, "GSM": 3, "G722": 9}
"""Static RTP payload types we can offer; GSM and G722 are for "codec refused" (488) checks."""

_BLOCK = re.compile(r"[ \t]*<!-- BEGIN (\w+) -->\n(.*?)[ \t]*<!-- END \1 -->\n", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_LOG_ENTRY = re.compile(r"^(UDP|TCP) message (sent|received)[^\n]*\n\n([^\r\n]*)", re.MULTILINE)


@dataclass
class SippResult:
    """What one sipp run did. `ok` means sipp exited 0: the call matched the scenario."""

    command: list[str]
    returncode: int | None
    timed_out: bool
    duration_s: float
    stdout: str
    stderr: str
    scenario_file: Path
    message_log: Path
    error_log: Path
    responses: list[int] = field(default_factory=list)
    requests_received: list[str] = field(default_factory=list)
    requests_sent: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """A failure message for assertions: exit code, wire summary, sipp's own errors."""
        errors = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
        return (
            f"sipp {self.scenario_file.name}: exit {self.returncode}"
            f"{' (killed after timeout)' if self.timed_out else ''} in {self.duration_s:.1f}s; "
            f"responses {self.responses}, requests received {self.requests_received}, "
            f"sent {self.requests_sent}\nstderr: {self.stderr[-1500:]}\n"
            f"error log {self.error_log}:\n{errors[-3000:]}\nmessages: {self.message_log}"
        )


def render_scenario(
    name: str, workdir: Path, values: dict[str, object], blocks: set[str] = frozenset()
) -> Path:
    """Fill a scenario template into `workdir`: placeholders from `values`, keep `blocks`."""
    template = (SCENARIOS / f"{name}.xml").read_text()
    text = _BLOCK.sub(lambda m: m.group(2) if m.group(1) in blocks else "", template)

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"scenario {name}: no value for placeholder {{{{{key}}}}}")
        return str(values[key])

    text = _PLACEHOLDER.sub(fill, text)
    path = workdir / f"{name}.xml"
    path.write_text(text)
    return path


def parse_message_log(text: str) -> tuple[list[int], list[str], list[str]]:
    """(response codes received, request methods received, request methods sent) in order."""
    responses: list[int] = []
    received: list[str] = []
    sent: list[str] = []
    for match in _LOG_ENTRY.finditer(text):
        direction, first_line = match.group(2), match.group(3).strip()
        if first_line.startswith("SIP/2.0 "):
            if direction == "received":
                responses.append(int(first_line.split()[1]))
        elif first_line:
            (received if direction == "received" else sent).append(first_line.split()[0])
    return responses, received, sent


def run_sipp(
    scenario: Path,
    host: str,
    port: int,
    workdir: Path,
    *,
    transport: Literal["udp", "tcp"] = "udp",
    service: str = "1000",
    timeout_s: float = 30.0,
    extra_args: Sequence[str] = (),
) -> SippResult:
    """Run one call of `scenario` against host:port; never runs longer than `timeout_s` + 5 s.

    sipp's own global timeout (`-timeout`, an error) stops it first; the subprocess timeout
    and a process-group kill are the backstop.
    """
    if shutil.which(SIPP) is None:
        raise FileNotFoundError("sipp not found: install the 'sip-tester' package")
    stem = scenario.stem
    message_log, error_log = workdir / f"{stem}_messages.log", workdir / f"{stem}_errors.log"
    command = [
        SIPP, f"{host}:{port}", "-sf", str(scenario),
        "-t", "t1" if transport == "tcp" else "u1",
        "-i", HOST, "-p", str(free_port(udp=transport == "udp", tcp=transport == "tcp")),
        "-mi", HOST, "-mp", str(free_udp_block()),
        "-s", service, "-m", "1", "-l", "1", "-nostdin",
        "-timeout", f"{max(1, round(timeout_s))}s", "-timeout_error",
        "-trace_msg", "-message_file", str(message_log),
        "-trace_err", "-error_file", str(error_log),
        *extra_args,
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s + 5)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        stdout, stderr = proc.communicate()
    result = SippResult(
        command=command,
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        stdout=stdout,
        stderr=stderr,
        scenario_file=scenario,
        message_log=message_log,
        error_log=error_log,
    )
    if message_log.exists():
        log = message_log.read_text(errors="replace")
        result.responses, result.requests_received, result.requests_sent = parse_message_log(log)
    return result


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group we started (start_new_session), ignoring a finished one."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _codec_values(codec: str) -> dict[str, object]:
    name = codec.upper()
    if name not in PAYLOAD_TYPES:
        raise ValueError(f"codec must be one of {sorted(PAYLOAD_TYPES)}, got {codec!r}")
    return {"CODEC": name, "PT": PAYLOAD_TYPES[name]}


def _workdir(workdir: Path | None) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="sipp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def speech_call(
    host: str,
    port: int,
    pcap: Path | None,
    *,
    codec: str = "PCMU",
    wait_s: float = 10.0,
    bye_from: Literal["server", "caller"] = "server",
    transport: Literal["udp", "tcp"] = "udp",
    service: str = "1000",
    workdir: Path | None = None,
    timeout_s: float | None = None,
) -> SippResult:
    """A call that plays the caller's speech (`pcap`, None for silence) after the ACK.

    bye_from="server": the bot must hang up within `wait_s` of the ACK (we answer 200);
    bye_from="caller": we send BYE `wait_s` after the ACK and expect 200 (a BYE from the
    server before then fails the call).
    """
    if bye_from not in ("server", "caller"):
        raise ValueError(f"bye_from must be 'server' or 'caller', got {bye_from!r}")
    if pcap is not None and not pcap.exists():
        raise FileNotFoundError(f"pcap {pcap} does not exist")
    workdir = _workdir(workdir)
    values = {**_codec_values(codec), "WAIT_MS": int(wait_s * 1000)}
    blocks = {f"bye_{bye_from}"}
    if pcap is not None:
        values["PCAP"] = pcap.resolve()
        blocks.add("pcap")
    scenario = render_scenario("uac_speech", workdir, values, blocks)
    return run_sipp(
        scenario, host, port, workdir, transport=transport, service=service,
        timeout_s=timeout_s or wait_s + 15,
    )  # fmt: skip


def expect_status(
    host: str,
    port: int,
    status: int,
    *,
    codec: str = "PCMU",
    transport: Literal["udp", "tcp"] = "udp",
    service: str = "1000",
    workdir: Path | None = None,
    timeout_s: float = 15.0,
) -> SippResult:
    """An INVITE that must be refused with `status` (e.g. 404; 488 with codec="G722")."""
    if not 300 <= status <= 699:
        raise ValueError(f"expected a final error status 300-699, got {status}")
    workdir = _workdir(workdir)
    scenario = render_scenario("uac_expect", workdir, {**_codec_values(codec), "STATUS": status})
    return run_sipp(
        scenario, host, port, workdir, transport=transport, service=service, timeout_s=timeout_s
    )


def hangup_early(
    host: str,
    port: int,
    hangup_ms: int,
    *,
    pcap: Path | None = None,
    codec: str = "PCMU",
    transport: Literal["udp", "tcp"] = "udp",
    service: str = "1000",
    workdir: Path | None = None,
    timeout_s: float | None = None,
) -> SippResult:
    """Answered call that the caller hangs up `hangup_ms` after the ACK (mid-prompt)."""
    workdir = _workdir(workdir)
    values: dict[str, object] = {**_codec_values(codec), "HANGUP_MS": int(hangup_ms)}
    blocks = set()
    if pcap is not None:
        values["PCAP"] = pcap.resolve()
        blocks.add("pcap")
    scenario = render_scenario("uac_hangup_early", workdir, values, blocks)
    return run_sipp(
        scenario, host, port, workdir, transport=transport, service=service,
        timeout_s=timeout_s or hangup_ms / 1000 + 15,
    )  # fmt: skip
