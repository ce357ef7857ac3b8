"""Graceful drain, both ends: the server's (SIGTERM: refuse new calls, let the calls in
progress end) and `switchboard drain`'s (signal the running server, wait for it to exit).

A restart or deploy must not cut callers off mid-sentence: the first SIGTERM (or SIGINT) makes
admission answer 503 with Retry-After, so a proxy sends new calls to another node, while the
calls in progress go on until they end or `[server] drain_timeout_s` passes. A second signal
stops at once (an operator who cannot wait). Either way what remains is hung up by "system",
the records are flushed and the process exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO

log = logging.getLogger("switchboard")

PROGRESS_EVERY_S = 5.0
"""How often a drain logs the calls left (not every turn of its loop)."""

EXIT_EXITED, EXIT_TIMEOUT, EXIT_NO_SERVER = 0, 1, 2


# -- the server's side ------------------------------------------------------------------------


class StopSignals:
    """SIGTERM/SIGINT as `serve()` takes them: the first asks for a drain, any later one to
    stop now. The handler only sets events; the main loop does the work."""

    def __init__(self) -> None:
        self.drain = threading.Event()
        self.now = threading.Event()

    def on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.drain.is_set():
            log.warning("received %s again: stopping now, hanging up the calls left", name)
            self.now.set()
        else:
            log.info("received %s: draining (send it again to stop now)", name)
            self.drain.set()


class Drainable(Protocol):
    """What a drain needs of the server (`app.server.Server`)."""

    def begin_drain(self) -> None: ...

    def active_calls(self) -> int: ...


def drain_calls(
    server: Drainable,
    timeout_s: float,
    stop_now: threading.Event,
    on_tick: Callable[[], None] = lambda: None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> int:
    """Refuse new calls, then wait until the calls in progress have ended, `timeout_s` has
    passed or `stop_now` is set; `on_tick` runs every ~0.2 s meanwhile (health file, ...).

    Returns the calls still up: the caller's shutdown hangs them up. The SIP loop runs on
    its own thread throughout, so the calls waited for are served as usual."""
    server.begin_drain()
    started = time.monotonic()
    deadline = started + timeout_s
    left = server.active_calls()
    log.info(
        "draining: new calls get 503; %d call(s) in progress get up to %.0f s to end",
        left,
        timeout_s,
    )
    next_report = started + progress_every_s
    while left:
        now = time.monotonic()
        if stop_now.is_set():
            log.warning("drain cut short: hanging up %d call(s) now", left)
            return left
        if now >= deadline:
            log.warning("drain deadline (%.0f s) reached: hanging up %d call(s)", timeout_s, left)
            return left
        if now >= next_report:
            log.info("draining: %d call(s) left, %.0f s to the deadline", left, deadline - now)
            next_report = now + progress_every_s
        on_tick()
        stop_now.wait(min(0.2, deadline - now))
        left = server.active_calls()
    log.info("drained: no calls left after %.1f s", time.monotonic() - started)
    return 0


# -- `switchboard drain` ----------------------------------------------------------------------


def running_server(pid_file: Path) -> tuple[int | None, str]:
    """(pid, "") of the server that wrote `pid_file`, or (None, why there is none)."""
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None, f"no server running (no pid file {pid_file})"
    except OSError as exc:
        return None, f"cannot read the pid file {pid_file}: {exc}"
    try:
        pid = int(text)
    except ValueError:
        return None, f"stale pid file {pid_file}: {text!r} is not a process id"
    if pid <= 0 or not process_alive(pid):
        return None, f"stale pid file {pid_file}: process {pid} is not running"
    if not _runs_serve(pid):
        return None, f"stale pid file {pid_file}: process {pid} is not a switchboard server"
    return pid, ""


def process_alive(pid: int) -> bool:
    """Whether `pid` is running. A zombie has exited (only its parent has not looked yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, if not ours to signal
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: the signal test is all we have
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _runs_serve(pid: int) -> bool:
    """Whether `pid` runs `... serve`: a pid file left by a crash may name a reused pid,
    and SIGTERM must not go to whatever program has it now."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no procfs (or not ours to read): trust the pid file
    return b"serve" in args


def calls_left(health_file: Path) -> int | None:
    """The active calls the server last wrote to its health file (None: not known)."""
    try:
        value = json.loads(health_file.read_text()).get("active_calls")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def request_drain(
    pid_file: Path,
    health_file: Path,
    *,
    wait_s: float | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """SIGTERM the running server; with `wait_s`, wait that long for it to exit, printing the
    calls left as they change. 0: exited (or not waited for), 1: still running, 2: none."""
    pid, why = running_server(pid_file)
    if pid is None:
        print(f"switchboard: {why}", file=err)
        return EXIT_NO_SERVER
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"switchboard: server {pid} exited before it could be asked to drain", file=err)
        return EXIT_NO_SERVER
    print(f"asked server {pid} to drain: new calls get 503, calls in progress may end", file=out)
    if wait_s is None:
        return EXIT_EXITED
    deadline = time.monotonic() + wait_s
    shown: int | None = None
    while process_alive(pid):
        if time.monotonic() > deadline:
            print(f"switchboard: server {pid} still running after {wait_s:.0f} s", file=err)
            return EXIT_TIMEOUT
        left = calls_left(health_file)
        if left is not None and left != shown:
            print(f"{left} call(s) left", file=out, flush=True)
            shown = left
        time.sleep(0.2)
    print(f"server {pid} exited", file=out)
    return EXIT_EXITED
