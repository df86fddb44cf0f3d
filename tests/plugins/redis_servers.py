"""Fixtures that start private Redis servers (filled in by the Redis backend)."""
