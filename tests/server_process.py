"""Runs `switchboard serve` as a real process for end-to-end tests, on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.sip.ports import HOST, free_port, free_udp_block

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "switchboard ready"


@dataclass
class ServerProcess:
    """A running server; `log` accumulates its output (our logs and PJSIP's)."""

    process: subprocess.Popen[str]
    port: int
    env: dict[str, str]
    http_port: int = 0
    """The metrics/health listener's port on 127.0.0.1 (/metrics, /livez, /readyz)."""
    lines: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def uri(self, user: str = "1000") -> str:
        return f"sip:{user}@{HOST}:{self.port}"

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as systemd would; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    @classmethod
    def start(
        cls, overrides: dict[str, str], workdir: Path, timeout: float = 60.0
    ) -> ServerProcess:
        port = free_port()
        http_port = free_port(udp=False)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SWITCHBOARD_SIP__BIND": HOST,
            "SWITCHBOARD_SIP__UDP_PORT": str(port),
            "SWITCHBOARD_SIP__TCP_PORT": str(port),
            "SWITCHBOARD_SIP__RTP_PORT": str(free_udp_block(64)),
            "SWITCHBOARD_SIP__RTP_PORT_COUNT": "64",
            "SWITCHBOARD_SERVER__DATA_DIR": str(workdir),
            "SWITCHBOARD_STORE__URL": f"sqlite:///{workdir / 'switchboard.db'}",
            "SWITCHBOARD_HTTP__BIND": HOST,
            "SWITCHBOARD_HTTP__PORT": str(http_port),
            # hermetic engines: `auto` finds no model here (PocketSphinx + eSpeak) unless a test
            # points [models] dir at the real weights
            "SWITCHBOARD_MODELS__DIR": str(workdir / "models"),
            **overrides,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        server = cls(process, port, env, http_port=int(env["SWITCHBOARD_HTTP__PORT"]))
        ready = threading.Event()

        def pump() -> None:
            for line in process.stdout:
                server.lines.append(line)
                if READY_LINE in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, name="server-log", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"server not ready after {timeout:.0f} s:\n{server.log}")
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{server.log}")
        return server


def call_id_from(log: str, after: int) -> str:
    """The Call-ID of the call the server logged after position `after` of its log."""
    for line in log[after:].splitlines():
        if " -> dialplan " in line:
            return line.split("call ", 1)[1].split(" ", 1)[0]
    raise AssertionError(f"server logged no accepted call:\n{log[after:]}")
