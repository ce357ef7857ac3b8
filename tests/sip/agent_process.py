"""Client side of `tests.sip.agent_server`: start it, read its events, send it commands."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from app.sip.registration import Registration
from tests.sip.ports import HOST, free_port, free_udp_block

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0


class AgentProcess:
    """A running agent server on 127.0.0.1:`port`; `events` grows as it reports."""

    def __init__(self, proc: subprocess.Popen[str], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.events: list[dict] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="agent-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def uri(self, user: str = "1000") -> str:
        return f"sip:{user}@{HOST}:{self.port}"

    def log(self) -> str:
        """The agent's log (our logging and PJSIP's)."""
        return self.log_path.read_text(errors="replace")

    def mark(self) -> int:
        """Position in `events`: pass it as `after` to wait only for what comes next."""
        with self._changed:
            return len(self.events)

    def wait_for(
        self, match: Callable[[dict], bool], timeout_s: float = 10.0, after: int = 0
    ) -> dict:
        """The first event from index `after` on that `match`es; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for event in self.events[after:]:
                    if match(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no matching agent event within {timeout_s} s; events: "
                        f"{self.events[after:]}\nlog tail:\n{self.log()[-4000:]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def wait_event(
        self, kind: str, call_id: str | None = None, timeout_s: float = 10.0, after: int = 0
    ) -> dict:
        return self.wait_for(
            lambda e: e["event"] == kind and (call_id is None or e.get("call_id") == call_id),
            timeout_s,
            after,
        )

    def of_call(self, call_id: str, kind: str | None = None) -> list[dict]:
        """The events of one call so far (of one kind if given)."""
        with self._changed:
            return [
                e
                for e in self.events
                if e.get("call_id") == call_id and (kind is None or e["event"] == kind)
            ]

    def send(self, **command: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def transfer(self, call_id: str, target: str, fallback: str, timeout_s: float) -> None:
        """Have the call's scripted core call `context.transfer(...)` (result: a "transfer"
        event)."""
        self.send(
            cmd="transfer", call_id=call_id, target=target, fallback=fallback, timeout_s=timeout_s
        )

    def registration_status(self, timeout_s: float = 5.0) -> dict[str, dict]:
        """`SipAgent.registration_status()` of the running agent."""
        mark = self.mark()
        self.send(cmd="registration_status")
        return self.wait_event("registration_status", timeout_s=timeout_s, after=mark)["status"]

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Quit cleanly (agent.stop), kill if it hangs; return the exit code."""
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(
    workdir: Path, pjsip_log_level: int = 3, registrations: Sequence[Registration] = ()
) -> AgentProcess:
    """Start `tests.sip.agent_server` on free loopback ports; retry once if a port was taken.
    `registrations`: trunks the agent registers with from the start."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        port, rtp = free_port(), free_udp_block(64)
        log_path = workdir / f"agent{attempt}.log"
        command = [
            sys.executable, "-m", "tests.sip.agent_server", "--port", str(port),
            "--rtp-port", str(rtp), "--pjsip-log-level", str(pjsip_log_level),
        ]  # fmt: skip
        for registration in registrations:
            command += ["--registration", json.dumps(asdict(registration))]
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=None,
                start_new_session=True,
            )
        agent = AgentProcess(proc, port, log_path)
        try:
            agent.wait_event("ready", timeout_s=START_TIMEOUT_S)
            return agent
        except AssertionError:
            agent.stop(1)
            if proc.returncode != 3:  # 3: could not bind; anything else is a real failure
                raise
    raise RuntimeError(f"agent server could not bind a port:\n{log_path.read_text()}")
