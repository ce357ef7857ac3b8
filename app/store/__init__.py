"""Call records (CDRs and turns) in SQL: SQLite by default, PostgreSQL by URL."""
