"""Stopping and starting the real PostgreSQL server for outage drills.

The drills stop the server every other test uses, so `postgres_stopped()` always starts it
again, even when the test fails, and waits until it answers. Start command as in
scripts/test-services (a Debian cluster managed by pg_ctlcluster).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.pg_schema import postgres_problem


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
