"""Alembic environment: always run from `app.store.migrate` with an open connection.

Batch mode is on so the same migrations alter tables on SQLite (which recreates a table to
change it) and PostgreSQL.
"""

from __future__ import annotations

from alembic import context

from app.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
