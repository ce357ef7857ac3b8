"""systemd's notify protocol (sd_notify(3)) by hand: readiness, status, stopping and watchdog.

Written here rather than taken from a library because the protocol is one datagram of
`KEY=value` lines to the socket named by `$NOTIFY_SOCKET`, and the server must not gain a
dependency (or a C extension) for that. Without `NOTIFY_SOCKET` (a terminal, a container, the
tests) every call does nothing. Nothing here raises: losing the service manager must never
take calls down with it, so a failed send is logged once at warning and otherwise ignored.

The `Watchdog` is fed from the SIP event loop itself (`SipAgent(heartbeat=watchdog.feed)`),
not from a timer thread: if that loop hangs the pings stop and systemd restarts the service
after `WatchdogSec=`, which a timer thread of its own would hide.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def notify_address(value: str | None) -> str | None:
    """The `socket.sendto` address of a `NOTIFY_SOCKET` value: a filesystem path, or `@name`
    for Linux's abstract namespace (a leading NUL byte); None when unset or unsupported."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd 253+, VMs): not needed for a host service


class Notifier:
    """Sends notifications to the service manager named by `NOTIFY_SOCKET`, if any."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        value = environ.get("NOTIFY_SOCKET")
        self._address = notify_address(value)
        self._socket: socket.socket | None = None
        self._warned = False
        if value and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name: not notifying", value)
        if self._address is not None:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # A full receive queue must cost a lost ping, not a stalled SIP loop.
                sock.setblocking(False)
            except OSError as exc:
                self._warn(exc)
            else:
                self._socket = sock

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (notifications are sent)."""
        return self._socket is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` ("READY=1", "STATUS=...") as one datagram; whether it was sent."""
        if self._socket is None:
            return False
        message = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            self._socket.sendto(message, self._address)
        except OSError as exc:
            self._warn(exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Start-up is complete (Type=notify: systemd starts the units ordered after us)."""
        return self.send("READY=1", _status(status))

    def status(self, status: str) -> bool:
        """A one-line state for `systemctl status` ("draining 3 calls")."""
        return self.send(_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (so a slow drain is not mistaken for a hang)."""
        return self.send("STOPPING=1", *([_status(status)] if status else []))

    def watchdog(self) -> bool:
        """A keep-alive ping for `WatchdogSec=`."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("cannot notify the service manager at %r: %s", self._address, exc)


def _status(text: str) -> str:
    # One datagram holds newline-separated assignments: a newline would end STATUS early.
    return "STATUS=" + " ".join(text.split("\n"))


def watchdog_timeout_s(environ: Mapping[str, str], pid: int) -> float | None:
    """`WATCHDOG_USEC` in seconds when the watchdog is meant for process `pid`, else None.

    As sd_watchdog_enabled(3): `WATCHDOG_PID`, when set, names the process that must ping (a
    child that inherited the environment must not)."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    try:
        timeout_us = int(usec)
        if owner and int(owner) != pid:
            return None
    except ValueError:
        log.warning("WATCHDOG_USEC=%r or WATCHDOG_PID=%r is not a number: no watchdog", usec, owner)
        return None
    return timeout_us / 1e6 if timeout_us > 0 else None


class Watchdog:
    """Pings `WATCHDOG=1` from `feed()`, at most once per half `WATCHDOG_USEC`.

    `feed` runs on every turn of the SIP loop (about 100 times a second), so all it does
    between pings is read the monotonic clock and compare; it never blocks, never raises."""

    def __init__(
        self,
        notifier: Notifier,
        environ: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        environ = os.environ if environ is None else environ
        timeout_s = watchdog_timeout_s(environ, os.getpid() if pid is None else pid)
        self._notifier = notifier
        # Half the timeout, as sd_watchdog_enabled(3) advises: one late ping is not a restart.
        self.interval_s = timeout_s / 2 if timeout_s is not None and notifier.enabled else None
        self._clock = clock
        self._next = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def feed(self) -> None:
        """The loop is alive: ping if the last ping is half a timeout old."""
        if self.interval_s is None:
            return
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self.interval_s
        self._notifier.watchdog()
