"""The operations a request's work names: each runs its statements (see :mod:`._schema`) on
one connection, under that connection's mutex, and returns the raw reply that the
primitive's ``read`` turns into its answer.

Every operation takes the :class:`~._database.Connection` and its ``sqlite3`` handle first,
then the request's arguments. Every write is ONE statement in autocommit mode: SQLite runs a
lone write statement as its own transaction that takes the write lock before reading, exactly
like ``BEGIN IMMEDIATE``, so the busy handler applies and no transaction is ever held open
while a caller waits.

``now`` is the wall clock the caller read; the host clock (:mod:`txlock._hostclock`) is read
here, under the connection's mutex, right before the statement that judges or sets expiries.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from txlock._hostclock import host_now
from txlock.backends.sqlite._schema import (
    ACQUIRE,
    EXTEND,
    FORCE_RELEASE,
    HOLD,
    INSPECT,
    LIST,
    OWNED,
    RELEASE,
    SWEEP,
    bind,
    prefix_range,
)

if TYPE_CHECKING:
    from txlock.backends.sqlite._database import Connection

__all__ = [
    "acquire", "extend", "force_release", "hold", "inspect", "list_holds", "nothing", "owns", "release", "sweep",
    "sweep_before_closing",
]

#: Releases per process and database between two sweeps of expired and dead rows (released
#: rows are deleted by the release itself).
SWEEP_EVERY = 1024
#: The busy timeout of the sweep at close (seconds): close() must not wait for a busy database.
CLOSING_BUSY_TIMEOUT = 0.05


def nothing(connection: Connection, handle: sqlite3.Connection) -> None:
    """Nothing (opening the connection is the point)."""
    return None


def owns(connection: Connection, handle: sqlite3.Connection, owner: int) -> bool:
    """Whether any hold is bound to the process of ``owner``."""
    return handle.execute(OWNED, (owner,)).fetchone() is not None


def acquire(
    connection: Connection, handle: sqlite3.Connection, key: bytes, holder: bytes, ttl: float | None, now: float
) -> int | tuple[bytes, float | None] | None:
    """The granted token; else the current hold ``(holder, seconds left)`` (``None``: it just ended)."""
    this_owner = connection.database.owner
    owner = this_owner if ttl is None else None
    host = host_now()
    if handle.execute(ACQUIRE, bind(ACQUIRE, key, holder, owner, now, ttl, this_owner, host=host)).rowcount:
        return connection.noted
    row = handle.execute(HOLD, bind(HOLD, key, None, None, now, None, this_owner, host=host)).fetchone()
    return None if row is None else (bytes(row[0]), row[1])


def release(
    connection: Connection, handle: sqlite3.Connection, key: bytes, holder: bytes, now: float
) -> bytes | None:
    """``None`` when released (the row deleted) or not held; else the other holder."""
    database = connection.database
    if handle.execute(RELEASE, (key, holder)).rowcount:
        database.releases += 1
        if database.releases % SWEEP_EVERY == 0:
            sweep(connection, handle, now)
        return None
    row = handle.execute(HOLD, bind(HOLD, key, None, None, now, None, database.owner, host=host_now())).fetchone()
    return None if row is None else bytes(row[0])


def sweep(connection: Connection, handle: sqlite3.Connection, now: float) -> None:
    """Delete free, expired and dead rows (the trigger keeps their tokens in ``token_floor``)."""
    handle.execute(SWEEP, bind(SWEEP, b"", None, None, now, None, connection.database.owner, host=host_now()))


def sweep_before_closing(connection: Connection, handle: sqlite3.Connection, now: float) -> None:
    """:func:`sweep`, waiting at most :data:`CLOSING_BUSY_TIMEOUT` for the write lock (a
    process closing its database must not wait for someone else's long transaction)."""
    handle.execute(f"PRAGMA busy_timeout = {round(CLOSING_BUSY_TIMEOUT * 1000)}")
    try:
        sweep(connection, handle, now)
    finally:
        handle.execute(f"PRAGMA busy_timeout = {round(connection.busy * 1000)}")


def extend(
    connection: Connection, handle: sqlite3.Connection, key: bytes, holder: bytes, token: int, ttl: float | None,
    now: float,
) -> bool:
    """Whether the grant ``token`` still held ``key`` (and now ends as ``ttl`` says)."""
    this_owner = connection.database.owner
    owner = this_owner if ttl is None else None
    params = bind(EXTEND, key, holder, owner, now, ttl, this_owner, token, host_now())
    return bool(handle.execute(EXTEND, params).rowcount)


def hold(
    connection: Connection, handle: sqlite3.Connection, key: bytes, now: float
) -> tuple[bytes, float | None] | None:
    """The live hold on ``key``: ``(holder, seconds left)`` (``None`` left: process-bound), or ``None``."""
    params = bind(HOLD, key, None, None, now, None, connection.database.owner, host=host_now())
    row = handle.execute(HOLD, params).fetchone()
    return None if row is None else (bytes(row[0]), row[1])


def inspect(connection: Connection, handle: sqlite3.Connection, key: bytes, now: float) -> tuple[Any, ...] | None:
    """The live hold on ``key``: ``(holder, token, acquired_at, expires_at)``, or ``None``."""
    params = bind(INSPECT, key, None, None, now, None, connection.database.owner, host=host_now())
    row = handle.execute(INSPECT, params).fetchone()
    return None if row is None else tuple(row)


def list_holds(
    connection: Connection, handle: sqlite3.Connection, prefix: bytes, now: float
) -> list[tuple[Any, ...]]:
    """Every live hold whose key starts with ``prefix``, by key: ``(key, holder, token, ...)``."""
    low, high = prefix_range(prefix)
    params = bind(LIST, low, high, None, now, None, connection.database.owner, host=host_now())
    return handle.execute(LIST, params).fetchall()


def force_release(connection: Connection, handle: sqlite3.Connection, key: bytes, now: float) -> bool:
    """Free ``key`` whoever holds it; whether it was held."""
    params = bind(FORCE_RELEASE, key, None, None, now, None, connection.database.owner, host=host_now())
    return bool(handle.execute(FORCE_RELEASE, params).rowcount)
