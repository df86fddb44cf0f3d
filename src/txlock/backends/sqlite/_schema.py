"""What a txlock SQLite database is: its schema, the statements run on it, and the checks a
file passes before txlock writes to it.

One table, ``txlock_locks``, one row per held key (the key stored as a BLOB of
:func:`txlock._validate.encode`, so NUL and lone surrogates round-trip). A release or a
forced release deletes the row, so released keys leave nothing behind; expired and dead holds
are deleted by a sweep (every 1024th release of a process, and when a process closes the
database) or taken over by the next grant of their key. Before any row goes, a trigger raises
``token_floor`` (in ``txlock_meta``) to its token, and a brand-new row starts at
``token_floor + 1``: tokens strictly increase per key, across deletions too. See
``docs/sqlite.md``.

Schema versions (``PRAGMA user_version``): a new file is created at version 1 and brought up
to :data:`SCHEMA_VERSION` by the steps of ``_UPGRADES``, exactly like an older file, in one
``BEGIN IMMEDIATE`` transaction. Version 2 adds the host-clock expiry of timed holds
(:mod:`txlock._hostclock`): ``host_expires_at`` and the ``boot`` it belongs to. A row of
another boot, or written by a txlock that predates them, is judged on its wall-clock
``expires_at``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import time
from typing import Any

from txlock._errors import BackendError, ConfigurationError
from txlock._hostclock import BOOT_ID

__all__ = [
    "ACQUIRE",
    "APPLICATION_ID",
    "EXTEND",
    "FORCE_RELEASE",
    "HOLD",
    "INSPECT",
    "LIST",
    "OWNED",
    "RELEASE",
    "SCHEMA_VERSION",
    "SWEEP",
    "bind",
    "check_header",
    "check_path",
    "prefix_range",
    "prepare",
]

#: The layout of the tables this version reads and writes (``PRAGMA user_version``).
SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a txlock database: the bytes ``txLK``.
APPLICATION_ID = 0x74784C4B

_SCHEMA = (
    "CREATE TABLE txlock_meta (name TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID",
    # Seeded from the wall clock (microseconds): a store recreated after its file was lost or
    # moved away starts above every token the old one can have issued, so tokens never go back.
    "INSERT INTO txlock_meta (name, value) VALUES ('token_floor', :seed)",
    # Releases delete their row; a free row (holder NULL) is one an earlier txlock released,
    # kept until its key's next grant takes it over or a sweep deletes it.
    """CREATE TABLE txlock_locks (
        key BLOB PRIMARY KEY NOT NULL,  -- txlock._validate.encode(key)
        holder BLOB,                    -- encode(holder); NULL = free (the row keeps the token)
        token INTEGER NOT NULL,         -- fencing token of the latest grant
        owner INTEGER,                  -- process-bound hold: owner id of its process; else NULL
        acquired_at REAL,               -- wall clock (seconds since the epoch)
        expires_at REAL,                -- wall clock; NULL for a process-bound hold
        ttl REAL
    ) WITHOUT ROWID""",
    # A deleted row must never let its key's token regress: remember the largest deleted token.
    """CREATE TRIGGER txlock_keep_token_floor AFTER DELETE ON txlock_locks BEGIN
        UPDATE txlock_meta SET value = max(value, old.token) WHERE name = 'token_floor';
    END""",
    f"PRAGMA application_id = {APPLICATION_ID}",
    "PRAGMA user_version = 1",
)

#: The statements that bring a database from version N (the key) to N + 1.
_UPGRADES = {
    1: (
        "ALTER TABLE txlock_locks ADD COLUMN host_expires_at REAL",  # on the host clock (txlock._hostclock)
        "ALTER TABLE txlock_locks ADD COLUMN boot BLOB",  # the boot of host_expires_at; NULL: use expires_at
        # A writer that predates version 2 (a process that opened the file before the
        # upgrade) sets expires_at and leaves the host-clock columns as they were: void them,
        # so its hold is judged on the wall clock it wrote. Writers of version 2 always set
        # a new host_expires_at with expires_at.
        """CREATE TRIGGER txlock_void_host_clock AFTER UPDATE OF expires_at ON txlock_locks
        WHEN new.boot IS NOT NULL AND new.host_expires_at IS old.host_expires_at BEGIN
            UPDATE txlock_locks SET boot = NULL WHERE key = new.key;
        END""",
        "PRAGMA user_version = 2",
    ),
}

# Parameters, by number: ?1 key, ?2 holder, ?3 owner (NULL for a timed hold), ?4 now (wall
# clock), ?5 expires_at, ?6 ttl, ?7 this process's owner id (0 if none), ?8 token, ?9 now on
# the host clock, ?10 this boot's id (NULL: no host clock), ?11 host_expires_at, ?12 the boot
# of a timed hold (NULL for a process-bound one).
# How long a timed row's hold lasts still: on the host clock when the row was written in this
# boot, else on the wall clock.
_LEFT = "(CASE WHEN boot = ?10 THEN host_expires_at - ?9 ELSE expires_at - ?4 END)"
# Whether a row's hold is alive, without NULLs (three-valued logic would turn NOT into NULL).
_LIVE = (
    "(CASE WHEN expires_at IS NULL THEN (owner = ?7 OR txlock_alive(owner)) "
    "WHEN boot = ?10 THEN host_expires_at > ?9 ELSE expires_at > ?4 END)"
)
_SAME = "(holder = excluded.holder AND (expires_at IS NULL OR $LEFT > 0))"


def _expand(template: str) -> str:
    """Expand the constant fragments ``$LIVE``, ``$SAME`` and ``$LEFT`` (never any input)."""
    return template.replace("$LIVE", _LIVE).replace("$SAME", _SAME).replace("$LEFT", _LEFT)


# The granted token is reported through ``txlock_note()`` (a Python callback that records its
# argument) rather than ``RETURNING``, which costs SQLite an ephemeral table per statement
# (measured: 5 us of a 25 us acquire). VALUES is evaluated first, then the DO UPDATE SET, so
# when the statement changed a row (rowcount 1) the last noted value is the row's token.
ACQUIRE = _expand("""
INSERT INTO txlock_locks (key, holder, token, owner, acquired_at, expires_at, ttl, host_expires_at, boot)
VALUES (?1, ?2, txlock_note((SELECT value FROM txlock_meta WHERE name = 'token_floor') + 1), ?3, ?4, ?5, ?6, ?11, ?12)
ON CONFLICT (key) DO UPDATE SET
    token = txlock_note(CASE WHEN $SAME THEN token ELSE token + 1 END),
    acquired_at = CASE WHEN $SAME THEN acquired_at ELSE ?4 END,
    holder = excluded.holder, owner = excluded.owner, expires_at = excluded.expires_at, ttl = excluded.ttl,
    host_expires_at = excluded.host_expires_at, boot = excluded.boot
WHERE holder IS NULL OR holder = excluded.holder OR NOT $LIVE
""")
# The hold and how long it lasts still (NULL: bound to its process).
HOLD = _expand("SELECT holder, $LEFT FROM txlock_locks WHERE key = ?1 AND holder IS NOT NULL AND $LIVE")
# A release deletes the row (the trigger folds its token into token_floor first), so a store
# used by short-lived processes holds no more than its holds. A file written by an earlier
# txlock may still have free rows (holder NULL): ACQUIRE takes them over, SWEEP deletes them.
RELEASE = "DELETE FROM txlock_locks WHERE key = ?1 AND holder = ?2"
EXTEND = _expand("""
UPDATE txlock_locks SET owner = ?3, expires_at = ?5, ttl = ?6, host_expires_at = ?11, boot = ?12
WHERE key = ?1 AND holder = ?2 AND token = ?8 AND $LIVE
""")
FORCE_RELEASE = _expand("DELETE FROM txlock_locks WHERE key = ?1 AND holder IS NOT NULL AND $LIVE")
INSPECT = _expand(
    "SELECT holder, token, acquired_at, expires_at FROM txlock_locks WHERE key = ?1 AND holder IS NOT NULL AND $LIVE"
)
LIST = _expand(
    "SELECT key, holder, token, acquired_at, expires_at FROM txlock_locks "
    "WHERE holder IS NOT NULL AND key >= ?1 AND (?2 IS NULL OR key < ?2) AND $LIVE ORDER BY key"
)
SWEEP = _expand("DELETE FROM txlock_locks WHERE holder IS NULL OR NOT $LIVE")
OWNED = "SELECT 1 FROM txlock_locks WHERE owner = ?1 AND holder IS NOT NULL LIMIT 1"


def bind(
    statement: str, key: bytes, holder: bytes | None, owner: int | None, now: float, ttl: float | None,
    this_owner: int, token: int = 0, host: float = 0.0,
) -> tuple[Any, ...]:
    """The parameters of ``statement``, exactly as many as it uses (SQLite insists).

    ``owner`` is the owner id to bind the hold to (``None``: a timed hold), ``this_owner``
    the owner id of this process (0 if it has none yet); ``now`` and ``host`` are the same
    instant on the wall and the host clock."""
    count = _PARAMETER_COUNTS[statement]
    if count <= 8:
        return (key, holder, owner, now, None if ttl is None else now + ttl, ttl, this_owner, token)[:count]
    untimed = ttl is None or BOOT_ID is None
    return (
        key, holder, owner, now, None if ttl is None else now + ttl, ttl, this_owner, token, host, BOOT_ID,
        None if ttl is None or BOOT_ID is None else host + ttl, None if untimed else BOOT_ID,
    )[:count]


_PARAMETER_COUNTS = {
    statement: max(int(number) for number in re.findall(r"\?(\d+)", statement))
    for statement in (ACQUIRE, HOLD, RELEASE, EXTEND, FORCE_RELEASE, INSPECT, LIST, SWEEP, OWNED)
}


def prefix_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """``[low, high)`` bounds of the blobs starting with ``prefix`` (``high=None``: no bound)."""
    head = prefix.rstrip(b"\xff")
    if not head:
        return prefix, None
    return prefix, head[:-1] + bytes([head[-1] + 1])


# ---------------------------------------------------------------------- opening and checking a file


def check_path(path: str) -> None:
    """Refuse, before SQLite touches anything, a path that cannot work (naming what to do)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigurationError(
            f"cannot use SQLite lock database {path}: directory {directory} does not exist; "
            f"create it or choose another path"
        )
    if os.path.isdir(path):
        raise ConfigurationError(f"cannot use SQLite lock database {path}: it is a directory; name a file")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"cannot use SQLite lock database {path}: directory {directory} is not writable by this "
            f"process (SQLite creates {os.path.basename(path)}-wal and -shm beside the database); "
            f"fix its permissions or choose another path"
        )
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigurationError(
                f"cannot use SQLite lock database {path}: the file is not readable and writable by this "
                f"process; fix its permissions or choose another path"
            )
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigurationError(f"cannot use SQLite lock database {path}: not a regular file")


#: The first 16 bytes of every SQLite 3 database file.
_MAGIC = b"SQLite format 3\x00"


def check_header(path: str) -> None:
    """Refuse a non-empty file that does not start like a SQLite database, before SQLite
    opens it: SQLite would otherwise replay or delete the ``-wal`` and ``-shm`` files beside
    it, changing a file that is not txlock's."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(_MAGIC))
    except FileNotFoundError:
        return  # created on open
    except OSError as exc:
        raise BackendError(f"cannot read SQLite lock database {path} ({exc})") from exc
    if head and head != _MAGIC:
        raise _not_sqlite(path)


def _not_sqlite(path: str) -> ConfigurationError:
    return ConfigurationError(
        f"{path} is not a SQLite database (it was left untouched); choose another path for "
        f"the txlock lock database, or move the file away"
    )


def prepare(handle: sqlite3.Connection, path: str) -> None:
    """Check that ``path`` is a txlock database of this schema version, creating the schema in
    an empty file. Only reads until the file is known to be ours: a foreign file is never
    modified (not even switched to WAL)."""
    try:
        application_id = handle.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_NOTADB:
            raise _not_sqlite(path) from exc
        raise
    if application_id == 0:
        handle.execute("BEGIN IMMEDIATE")
        try:
            application_id = handle.execute("PRAGMA application_id").fetchone()[0]
            tables = handle.execute("SELECT name FROM sqlite_master").fetchall()
            if application_id == 0 and not tables:
                for statement in _SCHEMA:
                    handle.execute(statement, {"seed": time.time_ns() // 1000} if ":seed" in statement else ())
                _apply_upgrades(handle)
                handle.execute("COMMIT")
                application_id = APPLICATION_ID
        finally:
            if handle.in_transaction:
                handle.execute("ROLLBACK")
        if application_id == 0:
            names = ", ".join(sorted(str(row[0]) for row in tables)[:5])
            raise ConfigurationError(
                f"{path} is a SQLite database of another application (tables: {names}); it was left "
                f"untouched: choose another path for the txlock lock database"
            )
    if application_id != APPLICATION_ID:
        raise ConfigurationError(
            f"{path} is a SQLite database of another application (application_id {application_id:#x}); "
            f"it was left untouched: choose another path for the txlock lock database"
        )
    version = handle.execute("PRAGMA user_version").fetchone()[0]
    if 0 < version < SCHEMA_VERSION:
        version = _upgrade(handle)
    if version != SCHEMA_VERSION:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise ConfigurationError(
            f"{path} is a txlock lock database of schema version {version}, written by {newer} txlock; "
            f"this txlock reads version {SCHEMA_VERSION}. Use a txlock of the same version on every "
            f"process sharing it, or (with no lock held) delete the file and txlock recreates it"
        )
    mode = handle.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        handle.execute("PRAGMA journal_mode = WAL")


def _upgrade(handle: sqlite3.Connection) -> int:
    """Bring a txlock database of an older version to this one, in one write transaction
    (another process may be doing the same: the version is read again under the lock);
    the version it has then."""
    handle.execute("BEGIN IMMEDIATE")
    try:
        version = _apply_upgrades(handle)
        handle.execute("COMMIT")
    finally:
        if handle.in_transaction:
            handle.execute("ROLLBACK")
    return version


def _apply_upgrades(handle: sqlite3.Connection) -> int:
    """Run every step from the database's version on (inside the caller's transaction)."""
    version = int(handle.execute("PRAGMA user_version").fetchone()[0])
    while version in _UPGRADES:
        for statement in _UPGRADES[version]:
            handle.execute(statement)
        version = int(handle.execute("PRAGMA user_version").fetchone()[0])
    return version

