"""Alembic migrations of the call-record schema (run through `app.store.migrate`)."""
