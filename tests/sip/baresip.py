"""baresip as a caller that speaks a WAV file and records what it hears, or as a phone that
answers (a transfer target, `start_baresip_target`) and records what it hears.

sipp cannot record received RTP, so for "what did the caller hear" we run baresip 1.0.0
headless with a generated config dir: `aufile` plays the caller's speech, the `sndfile` audio
filter dumps the decoded received audio (and the encoded sent audio) as WAV files into the
workdir, `aubridge` is a do-nothing player (baresip needs one to start the receive path),
and `ctrl_tcp` lets us dial, hang up and quit, and tells us about call events as JSON.

baresip 1.0.0 follows a REFER by itself: it answers 202, calls the Refer-To target as a second
call and reports the outcome in NOTIFYs.

The received dump is written as RTP arrives (after baresip's jitter buffer, before any
player), so it is the bot's audio with no clock-driven gaps. aufile closes the call when its
file ends, so the speech is padded with silence beyond the longest call.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.media.audio import CALL_RATE
from app.media.g711 import Codec
from tests.sip.ports import HOST, free_port, free_udp_block
from tests.sip.rtp_pcap import silence
from tests.sip.wavfile import read_wav, write_wav

BARESIP = "baresip"
MODULE_PATH = Path("/usr/lib/baresip/modules")
CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 3.0
_STATUS_LINE = re.compile(r"\[\d+:\d\d:\d\d\] audio=\S+ \(bit/s\)\s*")
"""menu's status line, redrawn every 100 ms: '[0:00:03] audio=64000/64426 (bit/s)'."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class BaresipResult:
    """How the call went, from baresip's point of view."""

    established: bool
    """The call was answered (200 OK, media flowing)."""
    closed_by: Literal["remote", "caller"] | None
    """Who ended it: the server (BYE or a refusal), us after `duration_s`, or None (no close
    event seen before the deadline: baresip was killed)."""
    close_reason: str
    """baresip's reason text, e.g. 'Connection reset by peer' (BYE) or '404 Not Found'."""
    received_wav: Path | None
    """Decoded audio the caller heard, 8 kHz 16-bit mono."""
    sent_wav: Path | None
    """What the caller sent (its speech, before encoding)."""
    log: str
    log_path: Path
    returncode: int | None
    duration_s: float
    events: list[dict] = field(default_factory=list)

    def received_pcm(self) -> bytes:
        """The received audio as PCM, or a clear error if baresip recorded none."""
        if self.received_wav is None:
            raise FileNotFoundError(f"baresip recorded no received audio; log:\n{self.log[-3000:]}")
        return read_dump(self.received_wav)

    def describe(self) -> str:
        return (
            f"baresip call: established={self.established} closed_by={self.closed_by} "
            f"reason={self.close_reason!r} rc={self.returncode} in {self.duration_s:.1f}s; "
            f"events {[e.get('type') for e in self.events]}\nlog {self.log_path}:\n"
            f"{self.log[-3000:]}"
        )


def read_dump(path: Path) -> bytes:
    """PCM of a sndfile dump. If baresip died before closing it, the header still says 0
    frames, so fall back to everything after the `data` chunk header."""
    pcm, rate = read_wav(path)
    if pcm:
        if rate != CALL_RATE:
            raise ValueError(f"{path}: expected {CALL_RATE} Hz, got {rate}")
        return pcm
    raw = path.read_bytes()
    start = raw.find(b"data")
    if start < 0:
        raise ValueError(f"{path}: no WAV data chunk")
    data = raw[start + 8 :]
    return data[: len(data) - len(data) % 2]


class _Control:
    """ctrl_tcp client: netstring-framed JSON commands out, responses and events in."""

    def __init__(self, port: int, deadline: float, proc: subprocess.Popen[bytes]) -> None:
        while True:
            if proc.poll() is not None:
                raise ConnectionError(f"baresip exited ({proc.returncode}) before listening")
            try:
                self.sock = socket.create_connection((HOST, port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buffer = b""

    def send(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self.sock.sendall(f"{len(body)}:".encode() + body + b",")

    def receive(self, timeout_s: float) -> dict | None:
        """The next message, or None if none arrives within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._pop()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("baresip closed the control connection")
            self.buffer += chunk

    def _pop(self) -> dict | None:
        head, colon, _ = self.buffer.partition(b":")
        if not colon:
            return None
        if not head.isdigit():
            raise ValueError(f"bad netstring from baresip: {self.buffer[:40]!r}")
        start = len(head) + 1
        end = start + int(head)
        if len(self.buffer) <= end:
            return None
        body, self.buffer = self.buffer[start:end], self.buffer[end + 1 :]
        return json.loads(body)

    def close(self) -> None:
        self.sock.close()


def _write_config(
    workdir: Path,
    speech: Path,
    codec: Codec,
    transport: str,
    *,
    answermode: str = "manual",
    user: str = "harness",
    mediaenc: str = "",
    tls_cert: Path | None = None,
) -> tuple[Path, int, int]:
    """Config dir for one baresip: (config dir, ctrl_tcp port, SIP port).

    `mediaenc` ("srtp", "srtp-mand", ...) loads the srtp module and encrypts media with it.
    For TLS, baresip 1.0.0 verifies no server certificate (it has no setting for it), so a
    self-signed server is fine; it listens for TLS on the SIP port + 1, with `tls_cert`
    (certificate and key in one PEM file) as its own certificate."""
    cfg = workdir / "baresip"
    cfg.mkdir(exist_ok=True)
    snd = workdir / "audio"
    snd.mkdir(exist_ok=True)
    for old in snd.glob("dump-*.wav"):
        old.unlink()
    for path in (speech, snd, tls_cert or snd):
        if any(c in str(path) for c in " ,;\t"):
            raise ValueError(f"baresip config cannot hold the path {path}: no spaces/commas")
    control_port = free_port(udp=False)
    sip_port = free_port()
    while transport == "tls" and not _tcp_free(sip_port + 1):
        sip_port = free_port()
    rtp = free_udp_block(4)
    settings = {
        "poll_method": "epoll",
        "net_interface": HOST,
        "sip_listen": f"{HOST}:{sip_port}",
        "call_local_timeout": "30",
        "call_max_calls": "1",
        "audio_player": "aubridge,harness_sink",
        "audio_source": f"aufile,{speech}",
        "audio_alert": "aubridge,harness_alert",
        "audio_level": "no",
        "audio_buffer": "20-160",
        "rtp_ports": f"{rtp}-{rtp + 3}",
        "jitter_buffer_delay": "5-10",
        "rtp_stats": "no",
        "ringback_disabled": "yes",
        "module_path": str(MODULE_PATH),
        "ctrl_tcp_listen": f"{HOST}:{control_port}",
        "snd_path": str(snd),
    }
    if tls_cert is not None:
        settings["sip_certificate"] = str(tls_cert)
    modules = [
        ("module", "g711.so"),
        ("module", "aufile.so"),
        ("module", "sndfile.so"),
        ("module", "aubridge.so"),
        ("module_tmp", "account.so"),
        ("module_app", "menu.so"),
        ("module_app", "ctrl_tcp.so"),
    ]
    if mediaenc:
        modules.append(("module", "srtp.so"))
    lines = [f"{key}\t{value}" for key, value in settings.items()]
    lines += [f"{key}\t{value}" for key, value in modules]
    (cfg / "config").write_text("\n".join(lines) + "\n")
    uri = f"sip:{user}@{HOST}" + (f";transport={transport}" if transport != "udp" else "")
    account = (
        f"<{uri}>;regint=0;audio_codecs={codec.encoding_name};answermode={answermode};ptime=20"
    )
    if mediaenc:
        account += f";mediaenc={mediaenc}"
    (cfg / "accounts").write_text(account + "\n")
    (cfg / "contacts").write_text("")
    return cfg, control_port, sip_port


def _tcp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _padded_speech(speech_wav: Path, workdir: Path, min_s: float) -> Path:
    pcm, rate = read_wav(speech_wav)
    if rate != CALL_RATE:
        raise ValueError(f"{speech_wav}: baresip's aufile needs {CALL_RATE} Hz, got {rate}")
    missing_ms = int((min_s - len(pcm) / (2 * rate)) * 1000)
    return write_wav(workdir / "speech.wav", pcm + silence(max(0, missing_ms)), rate)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the baresip process group: it should have quit; TERM, then KILL."""
    for sig, wait_s in ((None, CLOSE_TIMEOUT_S), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_baresip_call(
    target_uri: str,
    speech_wav: Path,
    codec: str,
    duration_s: float,
    workdir: Path,
    *,
    transport: Literal["udp", "tcp", "tls"] = "udp",
    answer_timeout_s: float = ANSWER_TIMEOUT_S,
    mediaenc: str = "",
    tls_cert: Path | None = None,
) -> BaresipResult:
    """Dial `target_uri` (e.g. 'sip:1000@127.0.0.1:5090'), speak `speech_wav` from the
    answer on, and hang up after `duration_s` unless the server hangs up first (or after
    `answer_timeout_s` if the call is not answered by then).

    When the server transfers the call by REFER, baresip calls the target by itself; the
    result is about the first call, which ends when the server hangs up after the transfer,
    and quitting then ends the call to the target too.

    transport="tls" signals over TLS (baresip adds ";transport=tls" to the dialled URI itself).
    Give it `tls_cert` (certificate and key, one PEM file): without one baresip cannot accept
    TLS connections, so a request the server sends on a new connection to our Contact (its
    BYE, say) never arrives. `mediaenc` encrypts the media: "srtp" (RTP/AVP offer with SDES
    keys, plain RTP accepted), "srtp-mand" (RTP/SAVP offer, SRTP required); the log then says
    "SRTP is Enabled".

    The process always ends: quit, then SIGTERM/SIGKILL to its process group.
    """
    if shutil.which(BARESIP) is None:
        raise FileNotFoundError("baresip not found: install the 'baresip' package")
    law = Codec.from_name(codec)
    workdir.mkdir(parents=True, exist_ok=True)
    speech = _padded_speech(speech_wav, workdir, duration_s + answer_timeout_s + 30)
    cfg, control_port, _ = _write_config(
        workdir, speech, law, transport, mediaenc=mediaenc, tls_cert=tls_cert
    )
    log_path = workdir / "baresip.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [BARESIP, "-f", str(cfg), "-s"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    events: list[dict] = []
    established = False
    closed_by: Literal["remote", "caller"] | None = None
    reason = ""
    try:
        control = _Control(control_port, time.monotonic() + CONNECT_TIMEOUT_S, proc)
        try:
            control.send("dial", target_uri)
            deadline = time.monotonic() + answer_timeout_s
            hung_up = False
            while closed_by is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if hung_up:
                        break  # no close event after our hangup: give up, kill below
                    hung_up = True
                    control.send("hangup")
                    deadline = time.monotonic() + CLOSE_TIMEOUT_S
                    continue
                message = control.receive(remaining)
                if message is None or not message.get("event"):
                    continue
                events.append(message)
                kind = message.get("type")
                if kind == "CALL_ESTABLISHED" and not established:
                    established = True
                    deadline = time.monotonic() + duration_s
                elif kind == "CALL_CLOSED":
                    closed_by = "caller" if hung_up else "remote"
                    reason = str(message.get("param", ""))
            control.send("quit")
        finally:
            control.close()
    except (OSError, ValueError) as exc:
        reason = reason or f"control connection failed: {exc}"
    finally:
        _stop(proc)
    dumps = workdir / "audio"
    return BaresipResult(
        established=established,
        closed_by=closed_by,
        close_reason=reason,
        received_wav=next(iter(sorted(dumps.glob("dump-*-dec.wav"))), None),
        sent_wav=next(iter(sorted(dumps.glob("dump-*-enc.wav"))), None),
        log=_readable_log(log_path),
        log_path=log_path,
        returncode=proc.returncode,
        duration_s=time.monotonic() - started,
        events=events,
    )


def _readable_log(path: Path) -> str:
    """baresip's output without its 100 ms status line and terminal colours."""
    text = path.read_bytes().decode(errors="replace")
    text = _ANSI.sub("", _STATUS_LINE.sub("", text))
    return "\n".join(line for line in text.replace("\r", "\n").split("\n") if line.strip())


class BaresipTarget:
    """A running baresip that answers calls at once and records what it hears (the other end
    of a bridged transfer). Start it with `start_baresip_target`; `stop()` always ends it."""

    def __init__(
        self, proc: subprocess.Popen[bytes], control: _Control, port: int, workdir: Path
    ) -> None:
        self.proc = proc
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / "baresip.log"
        self.events: list[dict] = []
        self._control = control
        self._started = time.monotonic()

    @property
    def uri(self) -> str:
        """Where to send the call (baresip only answers its own user part, "target")."""
        return f"sip:target@{HOST}:{self.port}"

    def wait_event(self, kind: str, timeout_s: float) -> dict | None:
        """The first ctrl_tcp event of type `kind` (e.g. CALL_ESTABLISHED, CALL_CLOSED), seen
        before or within `timeout_s`; None if none came."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events:
                if event.get("type") == kind:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                message = self._control.receive(remaining)
            except (OSError, ValueError):
                return None
            if message is not None and message.get("event"):
                self.events.append(message)

    def stop(self) -> BaresipResult:
        """Quit baresip and return what happened (received audio in `received_wav`)."""
        closed = next((e for e in self.events if e.get("type") == "CALL_CLOSED"), None)
        with contextlib.suppress(OSError):
            self._control.send("quit")
        self._control.close()
        _stop(self.proc)
        dumps = self.workdir / "audio"
        return BaresipResult(
            established=any(e.get("type") == "CALL_ESTABLISHED" for e in self.events),
            closed_by="remote" if closed is not None else None,
            close_reason=str(closed.get("param", "")) if closed is not None else "",
            received_wav=next(iter(sorted(dumps.glob("dump-*-dec.wav"))), None),
            sent_wav=next(iter(sorted(dumps.glob("dump-*-enc.wav"))), None),
            log=_readable_log(self.log_path),
            log_path=self.log_path,
            returncode=self.proc.returncode,
            duration_s=time.monotonic() - self._started,
            events=list(self.events),
        )


def start_baresip_target(
    workdir: Path, codec: str = "PCMU", *, speech_wav: Path | None = None, max_s: float = 60.0
) -> BaresipTarget:
    """Start baresip listening on a free loopback port, answering every call at once
    (answermode=auto) and speaking `speech_wav` (default: silence) for at most `max_s`.

    Use it as a transfer target whose ears we can check: `stop().received_pcm()`.
    """
    if shutil.which(BARESIP) is None:
        raise FileNotFoundError("baresip not found: install the 'baresip' package")
    law = Codec.from_name(codec)
    workdir.mkdir(parents=True, exist_ok=True)
    if speech_wav is None:
        speech_wav = write_wav(workdir / "silence.wav", silence(100), CALL_RATE)
    speech = _padded_speech(speech_wav, workdir, max_s)
    cfg, control_port, sip_port = _write_config(
        workdir, speech, law, "udp", answermode="auto", user="target"
    )
    with (workdir / "baresip.log").open("wb") as log:
        proc = subprocess.Popen(
            [BARESIP, "-f", str(cfg), "-s"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        control = _Control(control_port, time.monotonic() + CONNECT_TIMEOUT_S, proc)
    except Exception:
        _stop(proc)
        raise
    return BaresipTarget(proc, control, sip_port, workdir)
