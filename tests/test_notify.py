"""sd_notify client and watchdog (`app.ops.notify`) against real AF_UNIX datagram sockets."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ops.notify import Notifier, Watchdog, notify_address, watchdog_timeout_s


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A service manager's notify socket bound to a path: (socket, NOTIFY_SOCKET value)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1.0)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on `sock`, without waiting for more."""
    sock.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(sock.recv(4096))
    except BlockingIOError:
        return messages
    finally:
        sock.settimeout(1.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@sb/notify") == "\0sb/notify"
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("vsock:2:1234") is None


def test_ready_status_stopping_arrive_as_datagrams(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("answering calls: 2 dialplan(s)")
    assert sock.recv(4096) == b"READY=1\nSTATUS=answering calls: 2 dialplan(s)"
    assert notifier.status("draining 3 calls\nsecond line")
    assert sock.recv(4096) == b"STATUS=draining 3 calls second line"  # one line only
    assert notifier.stopping("draining 3 call(s)")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining 3 call(s)"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_abstract_namespace_socket() -> None:
    """`NOTIFY_SOCKET=@name`: Linux's abstract namespace, as systemd uses in containers."""
    name = f"switchboard-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    watchdog = Watchdog(notifier, {"WATCHDOG_USEC": "200000"})
    assert not watchdog.enabled
    watchdog.feed()  # a no-op, no error


def test_send_failure_logs_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="app.ops.notify"):
        assert notifier.ready("up") is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot notify the service manager" in warnings[0].getMessage()


def test_watchdog_timeout_respects_watchdog_pid() -> None:
    pid = os.getpid()
    assert watchdog_timeout_s({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(pid)}, pid) == 0.2
    assert watchdog_timeout_s({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_timeout_s({}, pid) is None


def test_watchdog_pings_at_most_every_half_timeout(listener: tuple[socket.socket, str]) -> None:
    """Fed 100 times a second for 1 s with a 0.2 s timeout: one ping per 0.1 s, not 100."""
    sock, path = listener
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    watchdog = Watchdog(Notifier(env), env, clock=clock)
    assert watchdog.interval_s == pytest.approx(0.1)
    for _ in range(100):
        watchdog.feed()
        clock.now += 0.01
    pings = received(sock)
    assert set(pings) == {b"WATCHDOG=1"}
    assert 9 <= len(pings) <= 11  # 1 s / 0.1 s, give or take float rounding at the edges


def test_watchdog_for_another_pid_stays_silent(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    watchdog = Watchdog(Notifier(env), env, pid=4242)
    assert not watchdog.enabled
    watchdog.feed()
    assert received(sock) == []


def test_hung_loop_stops_the_pings(listener: tuple[socket.socket, str]) -> None:
    """The watchdog has no timer of its own: when the loop stops calling feed() (hung), no
    ping goes out however much time passes, so systemd's WatchdogSec= fires; pings resume
    when the loop does."""
    sock, path = listener
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    watchdog = Watchdog(Notifier(env), env, clock=clock)
    watchdog.feed()
    assert received(sock) == [b"WATCHDOG=1"]
    clock.now += 60.0  # the loop is stuck for a minute: feed() is not called
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    watchdog.feed()  # the loop turns again
    assert received(sock) == [b"WATCHDOG=1"]
