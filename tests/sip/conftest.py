"""Fixtures for the SIP harness tests: the prototype pjsua2 server in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sip.wavfile import read_wav

START_TIMEOUT_S = 15.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ProtoServer:
    """A running `tests.sip.proto_server` process on 127.0.0.1:`port` (UDP and TCP)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    record_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def recording(self, user: str, timeout_s: float = 5.0) -> bytes:
        """What the caller dialling `user` sent, once the server has saved it."""
        deadline = time.monotonic() + timeout_s
        while f"SAVED {user}\n" not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"server saved no recording for {user!r}:\n{self.log()}")
            time.sleep(0.05)
        return read_wav(self.record_dir / f"{user}.wav")[0]

    def stop(self) -> None:
        """Kill it: a clean pjsua shutdown takes over a second and the test is already done."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_proto_server(
    workdir: Path, wav: Path | None = None, lead_ms: int = 0, hangup_after_play: bool = False
) -> ProtoServer:
    """Start the prototype server on a free port and wait until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    record_dir = workdir / "received"
    record_dir.mkdir(exist_ok=True)
    log_path = workdir / "proto_server.log"
    command = [sys.executable, "-m", "tests.sip.proto_server", "--record-dir", str(record_dir)]
    command += ["--lead-ms", str(lead_ms), "--seconds", "300"]
    if wav is not None:
        command += ["--wav", str(wav)]
    if hangup_after_play:
        command.append("--hangup-after-play")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        text = log_path.read_text(errors="replace")
        ready = [line for line in text.splitlines() if line.startswith("READY ")]
        if ready:
            return ProtoServer(proc, int(ready[0].split()[1]), log_path, record_dir)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"prototype SIP server did not start:\n{text}")
        time.sleep(0.05)


@pytest.fixture
def proto_server(tmp_path: Path) -> Iterator[Callable[..., ProtoServer]]:
    """Factory: `proto_server(wav=..., lead_ms=..., hangup_after_play=...)`; all are stopped
    at the end of the test."""
    started: list[ProtoServer] = []

    def start(**kwargs: object) -> ProtoServer:
        server = start_proto_server(tmp_path / f"server{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
