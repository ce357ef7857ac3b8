"""Schema migrations of the call-record database (Alembic), run by `switchboard db upgrade` and
checked at server start.

The migration scripts live in `app/store/migrations`. A database made before migrations existed
(tables created by `create_all`, no `alembic_version`) holds exactly the baseline revision and
is stamped with it before upgrading. On PostgreSQL an advisory lock makes nodes that start at the
same moment migrate one after the other. On SQLite foreign keys are switched off while tables
are rebuilt (batch mode), or rebuilding `calls` would cascade-delete its turns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
_LOCK_ID = 0x5357_4244  # "SWBD": the advisory lock all nodes take around migrations


class SchemaError(RuntimeError):
    """The database schema is not the one this version of Switchboard writes."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: str | None  # None: no schema at all (a new database)
    head: str
    legacy: bool = False  # tables from before migrations, not yet stamped

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def status(engine: Engine) -> SchemaStatus:
    """Where the database stands; connects, so it raises SQLAlchemy's errors when it is down."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        legacy = current is None and inspect(connection).has_table("calls")
    return SchemaStatus(BASELINE if legacy else current, head_revision(), legacy)


def upgrade(engine: Engine, revision: str = "head") -> SchemaStatus:
    """Migrate up to `revision` (stamping a pre-migration database first); the new status."""
    with _migrating(engine) as (connection, config):
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None and inspect(connection).has_table("calls"):
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)
    return status(engine)


def downgrade(engine: Engine, revision: str) -> SchemaStatus:
    """Migrate down to `revision` ("base": drop every table); the new status."""
    with _migrating(engine) as (_connection, config):
        command.downgrade(config, revision)
    return status(engine)


def ensure_schema(engine: Engine, mode: str = "auto") -> SchemaStatus:
    """At start: "auto" upgrades to head; "check" raises `SchemaError` unless at head."""
    found = status(engine)
    if found.up_to_date:
        return found
    if mode == "check":
        where = "no schema" if found.current is None else f"revision {found.current}"
        raise SchemaError(
            f"call-record database has {where}, this version needs {found.head}: "
            'run `switchboard db upgrade` (or set [store] migrate = "auto")'
        )
    if found.current is not None and found.current not in _known_revisions():
        raise SchemaError(
            f"call-record database is at revision {found.current}, unknown to this version "
            f"(newest known: {found.head}): it was migrated by a newer Switchboard"
        )
    return upgrade(engine)


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def _config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@contextlib.contextmanager
def _migrating(engine: Engine) -> Iterator[tuple[Connection, AlembicConfig]]:
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        else:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
            connection.commit()
        try:
            yield connection, _config(connection)
            connection.commit()
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            else:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                connection.commit()
