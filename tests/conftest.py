"""Fixtures shared by the whole suite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout: real speech with reference transcripts."""
    if not (SHARED_DATA / "fsdd" / "manifest.jsonl").exists():
        pytest.fail(f"shared test data missing at {SHARED_DATA}: CI and sessions must have it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fsdd_manifest(shared_data: Path) -> list[dict]:
    """The FSDD manifest rows (audio, text, speaker, accent, ...)."""
    lines = (shared_data / "fsdd" / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


PG_URL = os.environ.get(
    "SWITCHBOARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SWITCHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL the tests use (`scripts/test-services` starts it and sets the URL)."""
    return PG_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis the tests use (`scripts/test-services` starts it and sets the URL)."""
    return REDIS_URL
