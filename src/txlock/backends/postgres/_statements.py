"""Every SQL statement of one store, read from the ``sql/`` files beside this module.

The files name the store's tables and indexes as ``{placeholders}``; they are filled in
once per store with :class:`psycopg.sql.Identifier` (always quoted, validated as plain
identifiers by the manager), never with text. Every value (keys, holders, timeouts,
tokens) stays a bound ``%(name)s`` parameter of the statement.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files

from psycopg import sql

__all__ = ["INDEXED_BYTES", "PRE_RELEASE_TABLE", "Statements"]

#: Bytes of the key covered by the prefix index used by ``list_locks``.
INDEXED_BYTES = 200
#: The version table of the pre-release schemas (before version 1): found in a schema, it
#: means tables of an older layout that txlock does not migrate.
PRE_RELEASE_TABLE = "txlock_version"

#: Files that are parts of statements, included where a statement names them in braces.
_FRAGMENT_FILES = ("grant_row", "grant_conflict")

_COMMENT = re.compile(r"^\s*--.*$|\s+--\s.*$", re.MULTILINE)

#: Fragments shared by several statements.
_FRAGMENTS = {
    # Microseconds of the server's clock: the seed of fencing tokens and queue tickets.
    "clock": sql.SQL("(extract(epoch FROM clock_timestamp()) * 1000000)::int8"),
    # A queue ticket counts while its liveness window runs and, when its process holds a
    # session advisory lock on its LISTEN connection, only while that session lives: a
    # killed waiter stops blocking the queue at once (the lock is probed shared and
    # transaction-scoped, so probing never blocks and holds nothing afterwards).
    "alive": sql.SQL("(w.session IS NULL OR NOT pg_try_advisory_xact_lock_shared(w.session))"),
    "indexed": sql.Literal(INDEXED_BYTES),
}


@functools.cache
def _read(name: str) -> str:
    """The text of ``sql/<name>.sql`` without its comments (psycopg reads ``%`` anywhere)."""
    text = files(__package__).joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")
    return "\n".join(line for line in _COMMENT.sub("", text).splitlines() if line.strip())


class Statements:
    """The statements of one store (schema, table, durability), composed once."""

    def __init__(self, schema: str, table: str, durable: bool) -> None:
        names = {
            "schema": sql.Identifier(schema),
            "locks": sql.Identifier(schema, table),
            "waiters": sql.Identifier(schema, table + "_waiters"),
            "versions": sql.Identifier(schema, "txlock_schema"),
            "locks_prefix_index": sql.Identifier(table + "_prefix"),
            "locks_owner_index": sql.Identifier(table + "_owner"),
            "waiters_key_index": sql.Identifier(table + "_waiters_key"),
            "waiters_owner_index": sql.Identifier(table + "_waiters_owner"),
            "unlogged": sql.SQL("" if durable else "UNLOGGED "),
            **_FRAGMENTS,
        }

        def compose(text: str) -> str:
            used = {name: value for name, value in names.items() if "{" + name + "}" in text}
            return sql.SQL(text).format(**used).as_string(None)

        def load(name: str) -> str:
            # Fragments first (the parts two statements share), then the names.
            text = _read(name)
            for fragment in _FRAGMENT_FILES:
                text = text.replace("{" + fragment + "}", _read(fragment))
            return compose(text)

        #: The qualified name of the pre-release version table (a bound parameter of
        #: ``pre_release``).
        self.pre_release_table = sql.Identifier(schema, PRE_RELEASE_TABLE).as_string(None)
        self.version = load("version")
        self.pre_release = load("pre_release")
        parts = re.split(r";\s*$", _read("schema"), flags=re.MULTILINE)
        self.create_tables = [compose(part.strip()) for part in parts if part.strip()]
        self.acquire = load("acquire")
        self.acquire_first = load("acquire_first")
        self.release = load("release")
        self.granted = load("granted")
        self.extend = load("extend")
        self.holder = load("holder")
        self.watch = load("watch")
        self.watch_mark = load("watch_mark")
        self.inspect = load("inspect")
        self.list = load("list")
        self.force_release = load("force_release")
        self.withdraw = load("withdraw")
        self.heartbeat = load("heartbeat")
        self.janitor = load("janitor")
