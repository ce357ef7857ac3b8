"""Drive sipp against a SIP server on loopback: one call per run, bounded in time.

The XML scenarios in `scenarios/` are templates: `{{NAME}}` placeholders (codec, pcap path,
pauses, expected status) are filled in here and optional `<!-- BEGIN x -->...<!-- END x -->`
blocks are kept or dropped, because sipp reads `play_pcap_audio` paths and expected statuses
when it loads the file, not per call. Pass/fail is sipp's exit code (0: the call followed the
scenario); the result also carries what was seen on the wire and the log paths for messages.

Callers: `speech_call`, `expect_status`, `hangup_early`; `dtmf_call` (speech with RFC 4733 keys
in its RTP, and SIP INFO keys at given times); `transfer_call` (answers the bot's REFER as the
test needs). The other end of a transfer is `tests.sip.target` (sipp) or
`tests.sip.baresip.start_baresip_target` (records what it hears).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.eval.sipp import kill_group, start_sipp
from tests.sip.ports import HOST, free_port, free_udp_block
from tests.sip.rtp_pcap import write_rtp_pcap

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
    action_log: Path | None = None
    """Where the scenario's `<log>` actions wrote (e.g. "REFER-TO sip:..." in uac_refer)."""
    responses: list[int] = field(default_factory=list)
    requests_received: list[str] = field(default_factory=list)
    requests_sent: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def logged(self) -> list[str]:
        """The lines the scenario's `<log>` actions wrote."""
        if self.action_log is None or not self.action_log.exists():
            return []
        return self.action_log.read_text(errors="replace").splitlines()

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
    name: str,
    workdir: Path,
    values: dict[str, object],
    blocks: set[str] = frozenset(),
    templates: Path = SCENARIOS,
) -> Path:
    """Fill the scenario template `templates/<name>.xml` into `workdir`: placeholders from
    `values`, keep `blocks` (a block nested in another is kept only when both are)."""
    text = (templates / f"{name}.xml").read_text()
    while True:  # again for blocks nested in kept ones
        kept = _BLOCK.sub(lambda m: m.group(2) if m.group(1) in blocks else "", text)
        if kept == text:
            break
        text = kept

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


def sipp_command(
    scenario: Path,
    host: str,
    port: int,
    logs: tuple[Path, Path, Path],
    *,
    transport: Literal["udp", "tcp"] = "udp",
    service: str = "1000",
    timeout_s: float = 30.0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """sipp placing one call of `scenario` to host:port from free local ports, stopping with
    an error after `timeout_s`; `logs`: its message, error and action log files."""
    message_log, error_log, action_log = logs
    return [
        SIPP, f"{host}:{port}", "-sf", str(scenario),
        "-t", "t1" if transport == "tcp" else "u1",
        "-i", HOST, "-p", str(free_port(udp=transport == "udp", tcp=transport == "tcp")),
        "-mi", HOST, "-mp", str(free_udp_block()),
        "-s", service, "-m", "1", "-l", "1", "-nostdin",
        "-timeout", f"{max(1, round(timeout_s))}s", "-timeout_error",
        "-trace_msg", "-message_file", str(message_log),
        "-trace_err", "-error_file", str(error_log),
        "-trace_logs", "-log_file", str(action_log),
        *extra_args,
    ]  # fmt: skip


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
    action_log = workdir / f"{stem}_logs.log"
    command = sipp_command(
        scenario, host, port, (message_log, error_log, action_log),
        transport=transport, service=service, timeout_s=timeout_s, extra_args=extra_args,
    )  # fmt: skip
    started = time.monotonic()
    proc = start_sipp(command, workdir)
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
        action_log=action_log,
    )
    if message_log.exists():
        log = message_log.read_text(errors="replace")
        result.responses, result.requests_received, result.requests_sent = parse_message_log(log)
    return result


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
    extra_args: Sequence[str] = (),
) -> SippResult:
    """An INVITE that must be refused with `status` (e.g. 404; 488 with codec="G722")."""
    if not 300 <= status <= 699:
        raise ValueError(f"expected a final error status 300-699, got {status}")
    workdir = _workdir(workdir)
    scenario = render_scenario("uac_expect", workdir, {**_codec_values(codec), "STATUS": status})
    return run_sipp(
        scenario, host, port, workdir, transport=transport, service=service,
        timeout_s=timeout_s, extra_args=extra_args,
    )  # fmt: skip


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


@dataclass(frozen=True)
class InfoKey:
    """One SIP INFO for `dtmf_call`, sent `at_ms` after the ACK (after the previous INFO's
    response at the earliest), which must be answered with `expect`.

    By default the body is what phones send for `key`: `Signal=<key>` and `Duration=<ms>`
    lines for application/dtmf-relay, the bare key for application/dtmf. Give `body` to send
    anything else (a malformed body, say).
    """

    at_ms: int
    key: str | None = None
    content_type: str = "application/dtmf-relay"
    body: str | None = None
    expect: int = 200
    duration_ms: int = 160

    def text(self) -> str:
        if self.body is not None:
            return self.body
        if self.key is None:
            raise ValueError("an InfoKey needs a key or a body")
        if self.content_type == "application/dtmf":
            return self.key
        return f"Signal={self.key}\nDuration={self.duration_ms}"


_INFO_STEP = """
  <pause milliseconds="{pause}"/>

  <send retrans="500">
    <![CDATA[

      INFO sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Harness" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} INFO
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: {content_type}
      Content-Length: [len]

{body}

    ]]>
  </send>

  <recv response="{expect}"/>
"""


def _info_steps(info: Sequence[InfoKey]) -> str:
    steps, previous = [], 0
    for cseq, item in enumerate(sorted(info, key=lambda i: i.at_ms), start=2):
        if cseq > 90:
            raise ValueError("at most 89 INFO requests per call")
        body = "\n".join(f"      {line}" for line in item.text().split("\n"))
        steps.append(
            _INFO_STEP.format(
                pause=max(0, item.at_ms - previous), cseq=cseq,
                content_type=item.content_type, body=body, expect=item.expect,
            )
        )  # fmt: skip
        previous = item.at_ms
    return "".join(steps)


def dtmf_call(
    host: str,
    port: int,
    *,
    speech: bytes | None = None,
    rfc2833: Sequence[tuple[int, str]] = (),
    info: Sequence[InfoKey] = (),
    codec: str = "PCMU",
    wait_s: float = 5.0,
    bye_from: Literal["server", "caller"] = "caller",
    transport: Literal["udp", "tcp"] = "udp",
    service: str = "1000",
    workdir: Path | None = None,
    timeout_s: float | None = None,
) -> SippResult:
    """A caller that speaks and presses keys: plays `speech` (8 kHz 16-bit PCM) from the ACK
    on, with RFC 4733 keys `rfc2833` [(at_ms, key), ...] in the same RTP stream, and sends
    the SIP `info` keys at their times, each INFO expecting its response status.

    Afterwards (`wait_s` counted from the last INFO, or from the ACK without INFO):
    bye_from="caller" hangs up; bye_from="server" waits up to `wait_s` for the bot's BYE.
    The INVITE offers `codec` and telephone-event/8000 (payload type 101).
    """
    if bye_from not in ("server", "caller"):
        raise ValueError(f"bye_from must be 'server' or 'caller', got {bye_from!r}")
    workdir = _workdir(workdir)
    values: dict[str, object] = {
        **_codec_values(codec),
        "WAIT_MS": int(wait_s * 1000),
        "INFO_STEPS": _info_steps(info),
    }
    blocks = {f"bye_{bye_from}"}
    if speech or rfc2833:
        pcap = write_rtp_pcap(speech or b"", workdir / "caller_dtmf.pcap", codec, list(rfc2833))
        values["PCAP"] = pcap.resolve()
        blocks.add("pcap")
    scenario = render_scenario("uac_dtmf", workdir, values, blocks)
    last_info_s = max((i.at_ms for i in info), default=0) / 1000
    return run_sipp(
        scenario, host, port, workdir, transport=transport, service=service,
        timeout_s=timeout_s or last_info_s + wait_s + 15,
    )  # fmt: skip


def transfer_call(
    host: str,
    port: int,
    *,
    refer: Literal["accept", "reject", "ignore"],
    refer_status: int = 603,
    refer_reason: str = "Decline",
    sipfrag: str | None = "200 OK",
    notify_delay_ms: int = 200,
    speech: bytes | None = None,
    rtp_echo: bool = False,
    codec: str = "PCMU",
    refer_wait_s: float = 10.0,
    wait_s: float = 5.0,
    bye_from: Literal["server", "caller"] = "server",
    transport: Literal["udp", "tcp"] = "udp",
    service: str = "1000",
    workdir: Path | None = None,
    timeout_s: float | None = None,
) -> SippResult:
    """A caller that the bot transfers (scenario uac_refer): it waits up to `refer_wait_s`
    after the ACK for the REFER, then
    - refer="reject": answers `refer_status` `refer_reason` (e.g. 603 Decline, 405);
    - refer="accept": answers 202, sends NOTIFY "100 Trying", then after `notify_delay_ms` a
      final NOTIFY with `sipfrag` (e.g. "200 OK", "486 Busy Here"; None: no final NOTIFY)
      - without calling the target itself (baresip does that: `run_baresip_call`);
    - refer="ignore": never answers (then hang up with bye_from="caller").
    Then it plays `speech` (8 kHz 16-bit PCM; only now: sipp aborts a call that receives a
    request while it starts a pcap), and bye_from="server" waits up to `wait_s` for the
    server's BYE, "caller" hangs up after `wait_s`. `result.logged()` holds "REFER-TO <uri>"
    with the REFER's target. rtp_echo=True sends back every RTP packet the caller receives
    (sipp's -rtp_echo): whoever is connected to the caller hears themselves.
    """
    if refer not in ("accept", "reject", "ignore"):
        raise ValueError(f"refer must be 'accept', 'reject' or 'ignore', got {refer!r}")
    if bye_from not in ("server", "caller"):
        raise ValueError(f"bye_from must be 'server' or 'caller', got {bye_from!r}")
    workdir = _workdir(workdir)
    values: dict[str, object] = {
        **_codec_values(codec),
        "WAIT_MS": int(wait_s * 1000),
        "REFER_WAIT_MS": int(refer_wait_s * 1000),
        "REFER_STATUS": refer_status,
        "REFER_REASON": refer_reason,
        "SIPFRAG": sipfrag or "",
        "NOTIFY_DELAY_MS": int(notify_delay_ms),
    }
    blocks = {f"bye_{bye_from}"}
    if refer != "ignore":
        blocks.add(f"refer_{refer}")
    if refer == "accept" and sipfrag is not None:
        blocks.add("final_notify")
    if speech:
        values["PCAP"] = write_rtp_pcap(speech, workdir / "caller.pcap", codec).resolve()
        blocks.add("pcap")
    scenario = render_scenario("uac_refer", workdir, values, blocks)
    return run_sipp(
        scenario, host, port, workdir, transport=transport, service=service,
        timeout_s=timeout_s or refer_wait_s + wait_s + 15,
        extra_args=["-rtp_echo"] if rtp_echo else (),
    )  # fmt: skip


@contextmanager
def call_in_progress(
    host: str, port: int, server_log: Callable[[], str], workdir: Path, hold_s: float = 6.0
) -> Iterator[None]:
    """A silent call that stays up `hold_s` (the caller hangs up); the body runs once the
    server has taken it (its "-> dialplan" log line, then 0.5 s for the ACK). On exit the
    call must have gone as scripted."""
    result: list[SippResult] = []
    holder = threading.Thread(
        target=lambda: result.append(
            speech_call(host, port, None, wait_s=hold_s, bye_from="caller", workdir=workdir)
        )
    )
    mark = len(server_log())
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while " -> dialplan " not in server_log()[mark:]:
            assert time.monotonic() < deadline, "the held call never reached the server"
            time.sleep(0.1)
        time.sleep(0.5)  # answered and confirmed
        yield
    finally:
        holder.join(hold_s + 25)
    assert result and result[0].ok, result[0].describe() if result else "held call did not end"
