"""Call records (CDRs and turns) in SQL: SQLite by default, PostgreSQL by URL."""

from app.store.db import open_engine
from app.store.queries import get_call, get_turns
from app.store.recorder import CallRecorder

__all__ = ["CallRecorder", "get_call", "get_turns", "open_engine"]
