"""Opening the call-record database from a URL: SQLite files or PostgreSQL through psycopg 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}
_POSTGRES_DRIVERS = {"postgresql", "postgresql+psycopg"}
_PG_CONNECT_TIMEOUT_S = 5


def open_engine(url: str) -> Engine:
    """An engine for `sqlite:///path` or `postgresql[+psycopg]://...`; anything else is refused.

    SQLite: the parent folder is created and the file runs in WAL mode, so readers (the CLI, the
    tests) never block the writer. PostgreSQL: bare `postgresql://` means psycopg 3, and pooled
    connections are pinged before use so a server restart costs one reconnect, not a failed write.
    """
    parsed = parse_url(url)
    if parsed.drivername in _SQLITE_DRIVERS:
        return _sqlite_engine(parsed)
    parsed = parsed.set(drivername="postgresql+psycopg")
    if "connect_timeout" not in parsed.query:
        # A black-holed host would otherwise hold the writer for the OS TCP timeout (minutes).
        parsed = parsed.update_query_dict({"connect_timeout": str(_PG_CONNECT_TIMEOUT_S)})
    return create_engine(parsed, pool_pre_ping=True)


def parse_url(url: str) -> URL:
    """Validate a database URL; the error names the scheme and what is accepted."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"invalid database URL {url!r}: {exc}") from exc
    if parsed.drivername not in _SQLITE_DRIVERS | _POSTGRES_DRIVERS:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///path/to/file.db "
            "or postgresql+psycopg://user@host/db"
        )
    return parsed


def create_schema(engine: Engine, mode: str = "auto") -> None:
    """Bring the database to the current schema by its Alembic migrations ("check": only
    verify, raising `SchemaError` when it is behind)."""
    from app.store.migrate import ensure_schema  # alembic is only needed when a schema is made

    ensure_schema(engine, mode)


def _sqlite_engine(url: URL) -> Engine:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValueError(
            f"SQLite call records need a file path (sqlite:///path/to/calls.db), got {url!s}"
        )
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def error_reason(exc: BaseException) -> str:
    """The driver's own message on one line, for logs and CLI errors (SQLAlchemy wraps it in
    paragraphs of its own; psycopg spreads hints over several lines)."""
    origin = getattr(exc, "orig", None) or exc
    text = " ".join(line.strip() for line in str(origin).splitlines() if line.strip())
    return text or type(origin).__name__
