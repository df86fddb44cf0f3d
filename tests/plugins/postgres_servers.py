"""Fixtures that start private PostgreSQL servers (filled in by the PostgreSQL backend)."""
