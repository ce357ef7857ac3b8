"""A private PostgreSQL schema per test, so runs never see each other's rows.

Plain helpers rather than fixtures, so each test module wraps them in the fixtures it needs
without star-imports: `with private_schema() as schema: url = pg_url(schema)`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL

_PG = make_url(PG_URL)  # from scripts/test-services, via the environment
PG_HOST, PG_PORT = _PG.host or "127.0.0.1", _PG.port or 5432


def pg_connect(**kwargs: object) -> psycopg.Connection:
    """A psycopg connection to the test server (for setup and direct assertions)."""
    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=_PG.username,
        password=_PG.password,
        dbname=_PG.database,
        **kwargs,
    )


def postgres_problem() -> str | None:
    """Why the test server cannot be used, or None when it answers."""
    try:
        with pg_connect(connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return (
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} (database {_PG.database}): "
            f"{exc}. Start it before running these tests."
        )


@contextlib.contextmanager
def private_schema() -> Iterator[str]:
    """Create a uniquely named schema, yield its name, drop it with everything in it."""
    schema = f"sb_test_{uuid.uuid4().hex[:12]}"
    with pg_connect(autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with pg_connect(autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def pg_url(schema: str, port: int = PG_PORT) -> str:
    """A SQLAlchemy URL whose connections see only `schema` (through `search_path`)."""
    url = _PG.set(port=port, query={"options": f"-csearch_path={schema}", "connect_timeout": "2"})
    return url.render_as_string(hide_password=False)
