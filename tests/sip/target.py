"""A SIP phone to transfer calls to: sipp as a UAS on a free loopback port, taking one call.

It answers (G.711, RTP from sipp is silence) or refuses with a status, after ringing for a
while, and then waits for the BYE or hangs up itself. It writes "CALLED <Request-URI> FROM
<From header>" to its log the moment the INVITE arrives, so a test can ask, while the call is
still up, whether and by whom it was called (`wait_called`), and afterwards how the call went
(`finish`: sipp's exit code says whether the call followed the script).

    target = start_target(tmp_path / "target")            # or with target_factory(...)
    ... transfer the caller to target.uri("agent") ...
    called = target.wait_called(5)                         # TargetCall or None
    result = target.finish(10)                             # SippResult, .ok
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.sip.ports import HOST, free_port, free_udp_block
from tests.sip.sipp import (
    SIPP,
    SippResult,
    kill_group,
    parse_message_log,
    render_scenario,
    start_sipp,
)

_CALLED = re.compile(r"^CALLED (\S+) FROM (.*)$", re.MULTILINE)
_URI = re.compile(r"<([^>]+)>|(sips?:[^\s;>]+)")


@dataclass(frozen=True)
class TargetCall:
    """The INVITE the target received."""

    request_uri: str
    from_header: str
    """The whole From header line, e.g. 'From: <sip:switchboard@127.0.0.1>;tag=...'."""

    @property
    def from_uri(self) -> str:
        """The URI in the From header, e.g. 'sip:switchboard@127.0.0.1'."""
        match = _URI.search(self.from_header.partition(":")[2])
        return (match.group(1) or match.group(2)) if match else ""


class SippTarget:
    """One running sipp UAS; see `start_target`."""

    def __init__(
        self,
        proc: subprocess.Popen[str],
        port: int,
        workdir: Path,
        scenario: Path,
        timeout_s: float,
    ) -> None:
        self.proc = proc
        self.port = port
        self.workdir = workdir
        self.scenario = scenario
        self.log_file = workdir / "target_logs.log"
        self.message_log = workdir / "target_messages.log"
        self.error_log = workdir / "target_errors.log"
        self._timeout_s = timeout_s
        self._started = time.monotonic()
        self._result: SippResult | None = None

    def uri(self, user: str = "agent") -> str:
        return f"sip:{user}@{HOST}:{self.port}"

    def _log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def called(self) -> TargetCall | None:
        """The INVITE received so far, if any (does not wait)."""
        match = _CALLED.search(self._log())
        return TargetCall(match.group(1), match.group(2).strip()) if match else None

    def wait_called(self, timeout_s: float) -> TargetCall | None:
        """Wait up to `timeout_s` for the INVITE; None when nobody called."""
        return self._wait(lambda: self.called(), timeout_s)

    def wait_answered(self, timeout_s: float) -> bool:
        """Wait until the target has answered and got the ACK (the call is up)."""
        return bool(self._wait(lambda: "ANSWERED" in self._log() or None, timeout_s))

    def cancelled(self) -> bool:
        """The caller gave up (CANCEL) while the target was ringing."""
        return "CANCELLED" in self._log()

    def wait_bye(self, timeout_s: float) -> bool:
        """Wait until the other side hung up on the target (BYE received)."""
        return bool(self._wait(lambda: "BYE RECEIVED" in self._log() or None, timeout_s))

    def _wait(self, probe: Callable[[], object], timeout_s: float) -> object:
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if value or time.monotonic() > deadline or self.proc.poll() is not None:
                return value or probe()
            time.sleep(0.05)

    def finish(self, timeout_s: float = 10.0) -> SippResult:
        """Wait for sipp to end its one call (killed after `timeout_s`) and return how it went."""
        if self._result is not None:
            return self._result
        timed_out = False
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(self.proc)
            stdout, stderr = self.proc.communicate()
        result = SippResult(
            command=list(self.proc.args),
            returncode=None if timed_out else self.proc.returncode,
            timed_out=timed_out,
            duration_s=time.monotonic() - self._started,
            stdout=stdout or "",
            stderr=stderr or "",
            scenario_file=self.scenario,
            message_log=self.message_log,
            error_log=self.error_log,
        )
        if self.message_log.exists():
            log = self.message_log.read_text(errors="replace")
            result.responses, result.requests_received, result.requests_sent = parse_message_log(
                log
            )
        self._result = result
        return result

    def stop(self) -> None:
        """Kill sipp if it still runs (safe to call twice)."""
        if self.proc.poll() is None:
            kill_group(self.proc)


def start_target(
    workdir: Path,
    *,
    answer: bool = True,
    status: int = 486,
    reason: str = "Busy Here",
    ring_ms: int = 0,
    hangup_after_ms: int | None = None,
    timeout_s: float = 30.0,
) -> SippTarget:
    """Start a target phone on a free loopback port and return once sipp runs.

    answer=False refuses the call with `status` `reason` after `ring_ms`; otherwise it answers
    after `ring_ms` and then waits for the BYE, or sends one itself `hangup_after_ms` after
    the answer. A CANCEL while it rings ends the call properly (`cancelled()`). sipp gives up
    (exit code 1) after `timeout_s` without its call done.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if answer:
        bye = {"bye_remote"} if hangup_after_ms is None else {"bye_target", "capture"}
        blocks = {"answer", *bye}
    else:
        if not 300 <= status <= 699:
            raise ValueError(f"a refusal needs a status 300-699, got {status}")
        blocks = {"reject"}
    values = {
        "RING_MS": max(1, int(ring_ms)),  # sipp: a timeout of 0 would wait forever
        "STATUS": status,
        "REASON": reason,
        "HANGUP_MS": int(hangup_after_ms or 0),
    }
    scenario = render_scenario("uas_target", workdir, values, blocks)
    port = free_port()
    command = [
        SIPP, "-sf", str(scenario), "-t", "u1",
        "-i", HOST, "-p", str(port), "-mi", HOST, "-mp", str(free_udp_block()),
        "-m", "1", "-nostdin",
        "-timeout", f"{max(1, round(timeout_s))}s", "-timeout_error",
        "-trace_msg", "-message_file", str(workdir / "target_messages.log"),
        "-trace_err", "-error_file", str(workdir / "target_errors.log"),
        "-trace_logs", "-log_file", str(workdir / "target_logs.log"),
    ]  # fmt: skip
    proc = start_sipp(command, workdir)
    target = SippTarget(proc, port, workdir, scenario, timeout_s)
    time.sleep(0.2)  # sipp binds its socket right away; give it a moment before anyone calls
    if proc.poll() is not None:
        result = target.finish(1)
        raise RuntimeError(f"sipp target did not start:\n{result.describe()}")
    return target


@contextlib.contextmanager
def target_factory(workdir: Path) -> Iterator[Callable[..., SippTarget]]:
    """`start(**kwargs)` as `start_target`, each target in its own dir under `workdir`; every
    target started is stopped on exit. As a fixture:

        @pytest.fixture
        def target_phone(tmp_path):
            with target_factory(tmp_path) as start:
                yield start
    """
    started: list[SippTarget] = []

    def start(**kwargs: object) -> SippTarget:
        target = start_target(workdir / f"target{len(started)}", **kwargs)
        started.append(target)
        return target

    try:
        yield start
    finally:
        for target in started:
            with contextlib.suppress(Exception):
                target.stop()
