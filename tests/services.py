"""Stopping and starting the real PostgreSQL and Redis servers for outage drills.

The drills stop the servers every other test uses, so they are always started again, even when
the test fails, and waited for until they answer. Start commands as in scripts/test-services
(a Debian PostgreSQL cluster managed by pg_ctlcluster; Redis without persistence).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import REDIS_URL
from tests.pg_schema import postgres_problem

_REDIS = urlsplit(REDIS_URL)
REDIS_HOST, REDIS_PORT = _REDIS.hostname or "127.0.0.1", _REDIS.port or 6379


def _cluster() -> list[str]:
    versions = sorted(
        Path("/etc/postgresql").iterdir(),
        key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()],
    )
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main"]


def can_stop_postgres() -> str | None:
    """Why the drill cannot stop PostgreSQL here, or None."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return "no pg_ctlcluster: PostgreSQL is not a local Debian cluster here"
    return None


def start_postgres(timeout: float = 60.0) -> None:
    subprocess.run([*_cluster(), "start"], check=False, capture_output=True, timeout=timeout)
    deadline = time.monotonic() + timeout
    while postgres_problem() is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"PostgreSQL did not come back: {postgres_problem()}")
        time.sleep(0.5)


@contextlib.contextmanager
def postgres_stopped() -> Iterator[None]:
    """PostgreSQL is down (fast shutdown: sessions are cut) inside the block."""
    subprocess.run([*_cluster(), "stop", "-m", "fast"], check=True, capture_output=True, timeout=60)
    try:
        yield
    finally:
        start_postgres()


REDIS_SERVER_OPTIONS = ("--bind", "127.0.0.1", "-::1", "--save", "", "--appendonly", "no")


def _answers_ping() -> bool:
    # No client-side retries (redis-py's default backs off for seconds): one try, one answer.
    client = redis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """The test Redis itself, stopped and started as an operator would (no persistence)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "shutdown", "nosave"],
            capture_output=True,
            timeout=10,
        )
        deadline = time.monotonic() + 10
        while _answers_ping():
            if time.monotonic() > deadline:
                raise RuntimeError("Redis did not stop")
            time.sleep(0.05)

    def start(self) -> None:
        """Start it like scripts/test-services does, unless it answers; wait for PING."""
        if _answers_ping():
            return
        log = self.workdir / "redis.log"
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--port", str(REDIS_PORT),
             *REDIS_SERVER_OPTIONS, "--dir", str(self.workdir), "--logfile", str(log)],
            check=True,
            timeout=10,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not _answers_ping():
            if time.monotonic() > deadline:
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"Redis did not come back on port {REDIS_PORT}:\n{tail}")
            time.sleep(0.05)
