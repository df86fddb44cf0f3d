"""The SQLite backend: locks shared by the processes of one host through one database file.

It is also the embedded default store: :func:`txlock.from_url` with no URL (and the CLI
without ``--url``) uses :func:`default_path`, unless ``$TXLOCK_URL`` says otherwise.

How it works (see ``docs/sqlite.md`` for the full story):

* One table, ``txlock_locks``, one row per key (the key stored as a BLOB of
  :func:`txlock._validate.encode`, so NUL and lone surrogates round-trip). Every primitive
  is ONE write statement (an ``INSERT ... ON CONFLICT DO UPDATE`` for an
  acquire, an ``UPDATE`` for a release) run in autocommit mode: SQLite runs a lone write
  statement as its own transaction that takes the write lock before reading, exactly like
  ``BEGIN IMMEDIATE``, so the busy handler applies and no transaction is ever held open
  while a caller waits. WAL journal, ``synchronous=NORMAL``.
* A release keeps the row (``holder = NULL``) so the next grant of the key takes
  ``token + 1``: fencing tokens strictly increase per key and survive restarts. Free rows
  are swept now and then; a trigger first raises ``token_floor`` (in ``txlock_meta``) to the
  token of every deleted row, and a brand-new row starts at ``token_floor + 1``.
* Holds without ``hold_timeout`` are bound to their process by an OS-level proof of life:
  each process that takes such a hold keeps an exclusive ``flock`` on its own file
  ``<db>-txlock/o-<owner>`` for as long as it lives. The kernel drops that lock the instant
  the process dies, so the next statement that meets the hold (the SQL function
  ``txlock_alive``) sees it dead and takes over: recovery needs no heartbeat and no clock.
* Timed holds expire on the wall clock (``time.time()``), the only clock the processes of a
  host share (``CLOCK_REALTIME`` is not affected by time namespaces).
* Waiters are woken by inotify (Linux): a release touches ``<db>-txlock/s-<bucket>``, the
  death of an owner closes its ``o-`` file (``IN_CLOSE_WRITE``); one watcher thread per
  process wakes the local waiters. Without inotify, waiters poll with a tight adaptive
  backoff capped at 25 ms.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import math
import os
import re
import sqlite3
import stat
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from txlock import _inotify
from txlock._errors import BackendError, BackendUnavailable, ConfigurationError, CorruptRecord
from txlock._manager import BaseLockManager, call_budget, parse_seconds
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import decode, encode
from txlock._waiter import Waiter

__all__ = ["SCHEMA_VERSION", "SQLiteLockManager", "default_path"]

log = logging.getLogger("txlock.sqlite")

T = TypeVar("T")

#: The layout of the tables this version reads and writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a txlock database: the bytes ``txLK``.
APPLICATION_ID = 0x74784C4B

_DEFAULT_BUSY_TIMEOUT = 5.0
#: The async path blocks its event loop for at most about this long on a busy database,
#: then backs off with ``asyncio.sleep``.
_ASYNC_BUSY_TIMEOUT = 0.005
#: Waiters re-check at least this often even when inotify promises a wake-up.
_SAFETY_NET = 1.0
#: Without inotify: first poll interval and cap of the adaptive backoff.
_POLL_FIRST, _POLL_CAP = 0.0005, 0.025
_BUCKETS = 64
_GC_EVERY = 1024  # releases per process and database between sweeps of free rows

# ---------------------------------------------------------------------- schema and SQL

_SCHEMA = (
    "CREATE TABLE txlock_meta (name TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID",
    # Seeded from the wall clock (microseconds): a store recreated after its file was lost or
    # moved away starts above every token the old one can have issued, so tokens never go back.
    "INSERT INTO txlock_meta (name, value) VALUES ('token_floor', :seed)",
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
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

# Parameters, by number: ?1 key, ?2 holder, ?3 owner (NULL for a timed hold), ?4 now,
# ?5 expires_at, ?6 ttl, ?7 this process's owner id (0 if none), ?8 token.
# Whether a row's hold is alive, without NULLs (three-valued logic would turn NOT into NULL).
_LIVE = "(CASE WHEN expires_at IS NULL THEN (owner = ?7 OR txlock_alive(owner)) ELSE expires_at > ?4 END)"
_SAME = "(holder = excluded.holder AND coalesce(expires_at > ?4, 1))"


def _sql(template: str) -> str:
    """Expand the constant fragments ``$LIVE`` and ``$SAME`` (never any input) in a statement."""
    return template.replace("$LIVE", _LIVE).replace("$SAME", _SAME)


# The granted token is reported through ``txlock_note()`` (a Python callback that records its
# argument) rather than ``RETURNING``, which costs SQLite an ephemeral table per statement
# (measured: 5 us of a 25 us acquire). VALUES is evaluated first, then the DO UPDATE SET, so
# when the statement changed a row (rowcount 1) the last noted value is the row's token.
_ACQUIRE = _sql("""
INSERT INTO txlock_locks (key, holder, token, owner, acquired_at, expires_at, ttl)
VALUES (?1, ?2, txlock_note((SELECT value FROM txlock_meta WHERE name = 'token_floor') + 1), ?3, ?4, ?5, ?6)
ON CONFLICT (key) DO UPDATE SET
    token = txlock_note(CASE WHEN $SAME THEN token ELSE token + 1 END),
    acquired_at = CASE WHEN $SAME THEN acquired_at ELSE ?4 END,
    holder = excluded.holder, owner = excluded.owner, expires_at = excluded.expires_at, ttl = excluded.ttl
WHERE holder IS NULL OR holder = excluded.holder OR NOT $LIVE
""")
_HOLD = _sql("SELECT holder, expires_at FROM txlock_locks WHERE key = ?1 AND holder IS NOT NULL AND $LIVE")
_RELEASE = "UPDATE txlock_locks SET holder = NULL WHERE key = ?1 AND holder = ?2"
_EXTEND = _sql("""
UPDATE txlock_locks SET owner = ?3, expires_at = ?5, ttl = ?6
WHERE key = ?1 AND holder = ?2 AND token = ?8 AND $LIVE
""")
_FORCE = _sql("UPDATE txlock_locks SET holder = NULL WHERE key = ?1 AND holder IS NOT NULL AND $LIVE")
_INSPECT = _sql(
    "SELECT holder, token, acquired_at, expires_at FROM txlock_locks WHERE key = ?1 AND holder IS NOT NULL AND $LIVE"
)
_LIST = _sql(
    "SELECT key, holder, token, acquired_at, expires_at FROM txlock_locks "
    "WHERE holder IS NOT NULL AND key >= ?1 AND (?2 IS NULL OR key < ?2) AND $LIVE ORDER BY key"
)
_SWEEP = _sql("DELETE FROM txlock_locks WHERE holder IS NULL OR NOT $LIVE")
_OWNED = "SELECT 1 FROM txlock_locks WHERE owner = ?1 AND holder IS NOT NULL LIMIT 1"


def _bind(
    sql: str, key: bytes, holder: bytes | None, owner: int | None, now: float, ttl: float | None, me: int,
    token: int = 0,
) -> tuple[Any, ...]:
    """The parameters of ``sql``, exactly as many as it uses (SQLite insists)."""
    return (key, holder, owner, now, None if ttl is None else now + ttl, ttl, me, token)[: _NPARAMS[sql]]


_NPARAMS = {
    sql: max(int(n) for n in re.findall(r"\?(\d+)", sql))
    for sql in (_ACQUIRE, _HOLD, _RELEASE, _EXTEND, _FORCE, _INSPECT, _LIST, _SWEEP, _OWNED)
}


def _prefix_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """``[low, high)`` bounds of the blobs starting with ``prefix`` (``high=None``: no bound)."""
    head = prefix.rstrip(b"\xff")
    if not head:
        return prefix, None
    return prefix, head[:-1] + bytes([head[-1] + 1])


def _bucket(key: bytes) -> int:
    return zlib.crc32(key) % _BUCKETS


# ---------------------------------------------------------------------- errors (the one translation point)


class _Locked(BackendUnavailable):
    """The database stayed locked by another connection for longer than the busy timeout."""


_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def _translate(exc: BaseException, path: str, busy: float) -> BackendError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in _BUSY_CODES:
        return _Locked(
            f"SQLite lock database {path} stayed locked by another connection for more than {busy:g}s "
            f"({exc}); a long transaction is open on it (close it), or raise busy_timeout"
        )
    if primary == sqlite3.SQLITE_NOTADB:
        return CorruptRecord(
            f"{path} is not a SQLite database any more ({exc}); stop the processes using it and "
            f"move the file away, txlock recreates it"
        )
    if primary == sqlite3.SQLITE_CORRUPT:
        return CorruptRecord(f"SQLite lock database {path} is corrupt ({exc}); move it away, txlock recreates it")
    if primary in {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}:
        return BackendError(
            f"cannot write SQLite lock database {path} ({exc}); the file and its directory must be "
            f"writable by this process"
        )
    if isinstance(exc, OSError):
        return BackendError(f"SQLite lock database {path}: {exc}")
    return BackendError(f"SQLite lock database {path} failed: {exc}")


# ---------------------------------------------------------------------- opening and checking a database


def _check_path(path: str) -> None:
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


def _check_header(path: str) -> None:
    """Refuse a non-empty file that does not start like a SQLite database, before SQLite
    opens it: SQLite would otherwise replay or delete the ``-wal`` and ``-shm`` files beside
    it, changing a file that is not txlock's."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except FileNotFoundError:
        return  # created on open
    except OSError as exc:
        raise BackendError(f"cannot read SQLite lock database {path} ({exc})") from exc
    if head and head != _MAGIC:
        raise ConfigurationError(
            f"{path} is not a SQLite database (it was left untouched); choose another path for "
            f"the txlock lock database, or move the file away"
        )


def _prepare(cx: sqlite3.Connection, path: str) -> None:
    """Check that ``path`` is a txlock database of this schema version, creating the schema in
    an empty file. Only reads until the file is known to be ours: a foreign file is never
    modified (not even switched to WAL)."""
    try:
        app_id = cx.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_NOTADB:
            raise ConfigurationError(
                f"{path} is not a SQLite database (it was left untouched); choose another path for "
                f"the txlock lock database, or move the file away"
            ) from exc
        raise
    if app_id == 0:
        cx.execute("BEGIN IMMEDIATE")
        try:
            app_id = cx.execute("PRAGMA application_id").fetchone()[0]
            tables = cx.execute("SELECT name FROM sqlite_master").fetchall()
            if app_id == 0 and not tables:
                for statement in _SCHEMA:
                    cx.execute(statement, {"seed": time.time_ns() // 1000} if ":seed" in statement else ())
                cx.execute("COMMIT")
                app_id = APPLICATION_ID
        finally:
            if cx.in_transaction:
                cx.execute("ROLLBACK")
        if app_id == 0:
            names = ", ".join(sorted(str(row[0]) for row in tables)[:5])
            raise ConfigurationError(
                f"{path} is a SQLite database of another application (tables: {names}); it was left "
                f"untouched: choose another path for the txlock lock database"
            )
    if app_id != APPLICATION_ID:
        raise ConfigurationError(
            f"{path} is a SQLite database of another application (application_id {app_id:#x}); it was "
            f"left untouched: choose another path for the txlock lock database"
        )
    version = cx.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise ConfigurationError(
            f"{path} is a txlock lock database of schema version {version}, written by {newer} txlock; "
            f"this txlock reads version {SCHEMA_VERSION}. Use a txlock of the same version on every "
            f"process sharing it, or (with no lock held) delete the file and txlock recreates it"
        )
    mode = cx.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        cx.execute("PRAGMA journal_mode = WAL")


# ---------------------------------------------------------------------- per process and database state


class _Conn:
    """One SQLite connection and the mutex that serializes its use by the threads of a process."""

    def __init__(self, db: _Database, busy: float) -> None:
        self.db = db
        self.busy = busy
        self.mutex = threading.Lock()
        self.cx: sqlite3.Connection | None = None
        self.noted = 0

    def note(self, value: int) -> int:
        """The SQL function ``txlock_note``: remember ``value`` (a token) and return it."""
        self.noted = value
        return value

    def _open(self) -> sqlite3.Connection:
        _check_header(self.db.path)  # before SQLite sees it, on every connection (it may be replaced)
        cx = sqlite3.connect(self.db.path, timeout=self.busy, isolation_level=None, check_same_thread=False)
        try:
            cx.create_function("txlock_alive", 1, self.db.alive)
            cx.create_function("txlock_note", 1, self.note)
            self.db.prepared(cx)
            cx.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            cx.close()
            raise
        self.cx = cx
        return cx

    def call(self, op: Callable[..., T], *args: Any) -> T:
        with self.mutex:
            try:
                cx = self.cx or self._open()
                cache = self.db.alive_cache
                if cache:
                    cache.clear()
                try:
                    return op(self, cx, *args)
                except BaseException:
                    if cx.in_transaction:
                        cx.rollback()
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise _translate(exc, self.db.path, self.busy) from exc

    def close(self) -> None:
        with self.mutex:
            if self.cx is not None:
                self.cx.close()
                self.cx = None


class _Database:
    """What one process knows about one database file: its connections, its owner file
    (the proof of life of this process's holds), its local waiters and signal files."""

    def __init__(self, path: str, busy: float) -> None:
        self.path = path
        self.sidecar = path + "-txlock"
        self.users = 0
        self.ready_mutex = threading.Lock()
        self.sync = _Conn(self, busy)
        self.aio = _Conn(self, _ASYNC_BUSY_TIMEOUT)
        self.owner = 0  # this process's owner id for this database (0: none yet)
        self.owner_fd = -1
        self.owner_mutex = threading.Lock()
        self.dead: set[int] = set()
        self.alive_cache: dict[int, bool] = {}
        self.waiters: dict[int, set[Waiter]] = {}
        self.wmutex = threading.Lock()
        self.signal_fds: dict[int, int] = {}
        self.watched = False
        self.releases = 0

    # -- schema check, once per process

    def prepared(self, cx: sqlite3.Connection) -> None:
        """Check (or create) the schema on every new connection: the file may have been
        replaced since the last one."""
        with self.ready_mutex:
            _prepare(cx, self.path)
            os.makedirs(self.sidecar, exist_ok=True)

    def open(self) -> None:
        """Open the sync connection now, so a bad path fails at construction."""
        self.sync.call(_nothing)

    # -- proof of life

    def owner_path(self, owner: int) -> str:
        return os.path.join(self.sidecar, f"o-{owner:016x}")

    def ensure_owner(self) -> int:
        """The owner id of this process, creating (and ``flock``-ing) its owner file on first use."""
        if self.owner:
            return self.owner
        with self.owner_mutex:
            if not self.owner:
                owner = (int.from_bytes(os.urandom(8), "big") >> 1) or 1  # 63 random bits
                # Lock under a temporary name, then rename: a sweeper that sees an "o-" file
                # unlocked may rightly conclude its process is dead.
                tmp = os.path.join(self.sidecar, f"t-{owner:016x}")
                try:
                    os.makedirs(self.sidecar, exist_ok=True)
                    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                except OSError as exc:
                    raise BackendError(
                        f"cannot create the owner file {tmp} of SQLite lock database {self.path} ({exc}); "
                        f"the directory {self.sidecar} must be writable by this process"
                    ) from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    os.rename(tmp, self.owner_path(owner))
                except BaseException as exc:
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    if isinstance(exc, OSError):
                        raise BackendError(f"cannot create the owner file {tmp} ({exc})") from exc
                    raise
                self.owner_fd = fd
                self.owner = owner
                self.sweep_owner_files()
        return self.owner

    def alive(self, owner: int | None) -> bool:
        """The SQL function ``txlock_alive``: whether the process of ``owner`` still lives."""
        if owner is None:
            return False
        if owner == self.owner:
            return True
        if owner in self.dead:
            return False
        known = self.alive_cache.get(owner)
        if known is not None:
            return known
        result = _probe(self.owner_path(owner))
        if result:
            self.alive_cache[owner] = True
        else:
            if len(self.dead) > 100_000:
                self.dead.clear()
            self.dead.add(owner)
        return result

    def sweep_owner_files(self) -> None:
        """Delete the owner files of dead processes (their holds already read as free)."""
        try:
            names = os.listdir(self.sidecar)
        except OSError:
            return
        for name in names:
            if name.startswith("o-") and name != f"o-{self.owner:016x}":
                _probe(os.path.join(self.sidecar, name))

    def release_owner(self) -> None:
        """Drop this process's proof of life, if it no longer backs any hold."""
        with self.owner_mutex:
            if not self.owner:
                return
            with contextlib.suppress(BackendError):
                if self.sync.call(_owns, self.owner):
                    return
            with contextlib.suppress(OSError):
                os.unlink(self.owner_path(self.owner))
            with contextlib.suppress(OSError):
                os.close(self.owner_fd)
            self.owner, self.owner_fd = 0, -1

    # -- waking waiters

    def register(self, key: bytes, waiter: Waiter) -> None:
        if waiter.data is None:
            bucket = _bucket(key)
            waiter.data = [bucket, 0, key]  # bucket, polls so far, key
            with self.wmutex:
                self.waiters.setdefault(bucket, set()).add(waiter)
            if not self.watched:
                self.watched = self._watch()

    def _watch(self) -> bool:
        """Have release and death signals of other processes delivered; ``False`` if impossible."""
        watcher = _inotify.get()
        if watcher is None:
            return False
        try:
            watcher.watch(self.sidecar, _WATCH_MASK, self._on_event)
        except OSError as exc:
            log.debug("cannot watch %s (%s); waiters poll", self.sidecar, exc)
            return False
        return True

    def _on_event(self, mask: int, name: bytes) -> None:
        if mask & (_inotify.IN_Q_OVERFLOW | _inotify.IN_IGNORED):
            if mask & _inotify.IN_IGNORED:
                self.watched = False
            self.wake(None)
        elif name.startswith(b"s-"):
            with contextlib.suppress(ValueError):
                self.wake(int(name[2:], 16))
        elif name.startswith(b"o-") and mask & _inotify.IN_CLOSE_WRITE:
            self.wake(None)  # a process holding locks died (or exited)

    def parked(self, key: bytes) -> int:
        """How many waiters of this process are registered on ``key``."""
        with self.wmutex:
            return sum(1 for w in self.waiters.get(_bucket(key), ()) if w.data is not None and w.data[2] == key)

    def unregister(self, waiter: Waiter) -> None:
        data = waiter.data
        waiter.data = None
        if data is not None:
            with self.wmutex:
                group = self.waiters.get(data[0])
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self.waiters[data[0]]

    def wake(self, bucket: int | None) -> None:
        if not self.waiters:
            return
        with self.wmutex:
            if bucket is None:
                group = [w for ws in self.waiters.values() for w in ws]
            else:
                group = list(self.waiters.get(bucket, ()))
        for waiter in group:
            waiter.wake()

    def signal(self, key: bytes) -> None:
        """Tell every process that ``key`` was freed: touch its bucket's signal file."""
        bucket = _bucket(key)
        self.wake(bucket)
        fd = self.signal_fds.get(bucket)
        try:
            if fd is None:
                name = os.path.join(self.sidecar, f"s-{bucket:02x}")
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fd = self.signal_fds.setdefault(bucket, fd)
            os.utime(fd)
        except OSError as exc:  # waiters elsewhere fall back to their safety net
            log.debug("could not signal a release on %s: %s", self.sidecar, exc)

    def retry_after(self, waiter: Waiter | None, expires_at: float | None, now: float) -> float:
        left = math.inf if expires_at is None else max(0.0, expires_at - now) + 0.0005
        if waiter is None or waiter.data is None:
            return min(left, _POLL_FIRST)
        if self.watched:
            return min(left, _SAFETY_NET)
        data = waiter.data
        data[1] += 1
        return min(left, _POLL_FIRST * 2.0 ** min(int(data[1]), 16), _POLL_CAP)

    def after_fork(self) -> None:
        # The parent's connections must not be used (nor closed: SQLite would tidy up files
        # the parent still uses) by the child; keep them alive and forgotten.
        for conn in (self.sync, self.aio):
            if conn.cx is not None:
                _graveyard.append(conn.cx)
            conn.cx = None
            conn.mutex = threading.Lock()
        # The child must neither keep the parent's holds alive nor end them: closing the
        # inherited descriptor leaves the parent's flock in place (it lives while any
        # descriptor of that open file exists, and the parent keeps one).
        if self.owner_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.owner_fd)
        self.owner, self.owner_fd = 0, -1
        for fd in self.signal_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.signal_fds = {}
        self.owner_mutex = threading.Lock()
        self.ready_mutex = threading.Lock()
        self.wmutex = threading.Lock()
        self.waiters = {}
        self.watched = False
        self.alive_cache = {}


def _probe(path: str) -> bool:
    """Whether the process owning the owner file ``path`` lives (holds its ``flock``).

    A dead owner's file is deleted. When in doubt (permissions), answer alive: never steal."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot check owner file %s (%s); treating its holds as alive", path, exc)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        log.warning("cannot check owner file %s (%s); treating its holds as alive", path, exc)
        return True
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)


_WATCH_MASK = (
    _inotify.IN_ATTRIB | _inotify.IN_CLOSE_WRITE | _inotify.IN_CREATE | _inotify.IN_MOVED_TO | _inotify.IN_ONLYDIR
)

_databases: dict[tuple[str, float], _Database] = {}
_databases_mutex = threading.Lock()
_graveyard: list[sqlite3.Connection] = []


def _database(path: str, busy: float) -> _Database:
    with _databases_mutex:
        db = _databases.get((path, busy))
        if db is None:
            db = _databases[(path, busy)] = _Database(path, busy)
        db.users += 1
        return db


def _after_fork() -> None:
    global _databases_mutex
    _databases_mutex = threading.Lock()
    for db in _databases.values():
        db.after_fork()


def _at_exit() -> None:
    # The descriptors close with the process anyway; deleting the owner files saves the next
    # process a probe each.
    for db in list(_databases.values()):
        if db.owner:
            with contextlib.suppress(OSError):
                os.unlink(db.owner_path(db.owner))


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_at_exit)


# ---------------------------------------------------------------------- operations (run under a connection's mutex)


def _nothing(c: _Conn, cx: sqlite3.Connection) -> None:
    return None


def _owns(c: _Conn, cx: sqlite3.Connection, owner: int) -> bool:
    return cx.execute(_OWNED, (owner,)).fetchone() is not None


def _op_acquire(
    c: _Conn, cx: sqlite3.Connection, key: bytes, holder: bytes, ttl: float | None, now: float
) -> int | tuple[bytes, float | None] | None:
    """The granted token; else the current hold ``(holder, expires_at)`` (``None``: it just ended)."""
    me = c.db.owner
    if cx.execute(_ACQUIRE, _bind(_ACQUIRE, key, holder, me if ttl is None else None, now, ttl, me)).rowcount:
        return c.noted
    row = cx.execute(_HOLD, _bind(_HOLD, key, None, None, now, None, me)).fetchone()
    return None if row is None else (bytes(row[0]), row[1])


def _op_release(c: _Conn, cx: sqlite3.Connection, key: bytes, holder: bytes, now: float) -> bytes | None:
    """``None`` when released or not held; else the other holder."""
    db = c.db
    if cx.execute(_RELEASE, (key, holder)).rowcount:
        db.releases += 1
        if db.releases % _GC_EVERY == 0:
            _op_sweep(c, cx, now)
        return None
    row = cx.execute(_HOLD, _bind(_HOLD, key, None, None, now, None, db.owner)).fetchone()
    return None if row is None else bytes(row[0])


def _op_sweep(c: _Conn, cx: sqlite3.Connection, now: float) -> None:
    """Delete free, expired and dead rows (the trigger keeps their tokens in ``token_floor``)."""
    cx.execute(_SWEEP, _bind(_SWEEP, b"", None, None, now, None, c.db.owner))


def _op_extend(
    c: _Conn, cx: sqlite3.Connection, key: bytes, holder: bytes, token: int, ttl: float | None, now: float
) -> bool:
    me = c.db.owner
    params = _bind(_EXTEND, key, holder, me if ttl is None else None, now, ttl, me, token)
    return bool(cx.execute(_EXTEND, params).rowcount)


def _op_hold(c: _Conn, cx: sqlite3.Connection, key: bytes, now: float) -> tuple[bytes, float | None] | None:
    row = cx.execute(_HOLD, _bind(_HOLD, key, None, None, now, None, c.db.owner)).fetchone()
    return None if row is None else (bytes(row[0]), row[1])


def _op_inspect(c: _Conn, cx: sqlite3.Connection, key: bytes, now: float) -> tuple[Any, ...] | None:
    row = cx.execute(_INSPECT, _bind(_INSPECT, key, None, None, now, None, c.db.owner)).fetchone()
    return None if row is None else tuple(row)


def _op_list(c: _Conn, cx: sqlite3.Connection, prefix: bytes, now: float) -> list[tuple[Any, ...]]:
    low, high = _prefix_range(prefix)
    return cx.execute(_LIST, _bind(_LIST, low, high, None, now, None, c.db.owner)).fetchall()


def _op_force(c: _Conn, cx: sqlite3.Connection, key: bytes, now: float) -> bool:
    return bool(cx.execute(_FORCE, _bind(_FORCE, key, None, None, now, None, c.db.owner)).rowcount)


# ---------------------------------------------------------------------- reply parsing (pure)


def _info(key: str, row: tuple[Any, ...]) -> LockInfo:
    holder, token, acquired_at, expires_at = row
    return LockInfo(key, decode(bytes(holder)), int(token), float(acquired_at), expires_at, None)


# ---------------------------------------------------------------------- the manager


class SQLiteLockManager(BaseLockManager):
    """Locks shared by the processes of one host through one SQLite database file.

    ``SQLiteLockManager("/path/to/locks.db")`` or ``sqlite:///path/to/locks.db``. The file
    (and its directory's ``locks.db-wal``, ``-shm`` and ``-txlock/``) is created on first use;
    the directory must exist and be writable. With no URL, :func:`txlock.from_url` uses
    :func:`default_path` (the user's state directory).

    Guarantees and limits:

    * Every primitive is one short write transaction (one statement in autocommit mode,
      which SQLite runs like ``BEGIN IMMEDIATE``); nothing is held open while a caller waits.
      A busy database is waited for up to ``busy_timeout`` seconds (default 5), then
      :class:`~txlock.BackendUnavailable` names the file.
    * Fencing tokens strictly increase per key across all grants, also across restarts
      (the counter lives in the database).
    * A hold without ``hold_timeout`` ends when its process dies: the process's ``flock``
      on its owner file is dropped by the kernel, and the next statement that meets the hold
      treats it as free; waiters are woken at once (inotify). There is no heartbeat, so a
      paused or slow process never loses its holds, and no clock is involved.
    * A hold with ``hold_timeout`` ends that many seconds after its grant on the wall clock
      (``time.time()``): a clock stepped forward ends timed holds early, a clock stepped back
      makes them last longer.
    * Waiters in any process are woken within milliseconds of a release (Linux inotify;
      elsewhere an adaptive poll capped at 25 ms). No strict FIFO across processes, but no
      starvation either: each wake-up lets every waiter try again.
    * A forked child shares nothing with its parent: it neither keeps the parent's holds
      alive nor ends them (its own holds get its own owner file).
    * Async methods run the statement on the event loop; that path uses a 5 ms busy timeout
      and then backs off with ``asyncio.sleep``, so the loop is never blocked for longer.
    * ``LockInfo.waiters`` is ``None``: waiters in other processes are not counted.

    Args:
        path: the database file (made absolute).
        busy_timeout: seconds a sync call waits for another connection's write to finish.
        acquire_timeout, raise_on_timeout: see :class:`~txlock.BaseLockManager`.
    """

    schemes = ("sqlite",)
    capabilities = Capabilities(processes=True, notes=("waiters in other processes are not counted",))

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = _DEFAULT_BUSY_TIMEOUT, **options: Any
    ) -> None:
        super().__init__(**options)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        text = os.fspath(path)
        if text in ("", ":memory:") or text.startswith("file:"):
            raise ConfigurationError(
                f"SQLite lock database path {text!r} must name a file on disk (for locks within one "
                f"process use memory://)"
            )
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) or not busy_timeout >= 0:
            raise ConfigurationError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        # "sqlite:////abs" (SQLAlchemy's spelling) yields "//abs": one leading slash is meant.
        self.path = os.path.abspath("/" + text.lstrip("/") if text.startswith("//") else text)
        self.busy_timeout = float(busy_timeout)
        _check_path(self.path)
        self._db = _database(self.path, self.busy_timeout)
        self._closed = False
        try:
            self._db.open()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        return (self.path, self.busy_timeout)

    def _init_kwargs(self) -> dict[str, Any]:
        return {"path": self.path, "busy_timeout": self.busy_timeout, **self._common_kwargs()}

    def _url(self, *, redact: bool) -> str:
        query = self._common_query()
        if self.busy_timeout != _DEFAULT_BUSY_TIMEOUT:
            query["busy_timeout"] = f"{self.busy_timeout:g}"
        text = urlencode(query)
        return f"sqlite://{quote(self.path, safe='/')}" + (f"?{text}" if text else "")

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> SQLiteLockManager:
        from txlock._url import common_options, local_path

        path = local_path(url, "SQLite", "sqlite:///absolute/path/to/locks.db")
        kwargs = common_options(options, allowed=("busy_timeout",))
        if "busy_timeout" in options:
            busy = parse_seconds("busy_timeout", options["busy_timeout"])
            kwargs["busy_timeout"] = _DEFAULT_BUSY_TIMEOUT if busy is None else busy
        return cls(path, **kwargs)

    def close(self) -> None:
        """Close this process's connections to the file once no manager uses them. Holds stay;
        the proof of life of this process's process-bound holds stays while any exists."""
        if self._closed:
            return
        self._closed = True
        db = self._db
        with _databases_mutex:
            db.users -= 1
            last = db.users <= 0
        if last:
            db.release_owner()
            db.sync.close()
            db.aio.close()

    # ------------------------------------------------------------------ I/O helpers

    def _call(self, op: Callable[..., T], *args: Any) -> T:
        return self._db.sync.call(op, *args)

    def _parked_here(self, key: str) -> int:
        return self._db.parked(encode(key))

    async def _acall(self, op: Callable[..., T], *args: Any) -> T:
        # The async connection waits at most 5 ms inside SQLite (the loop must not block),
        # then yields to the loop and tries again: in all no longer than a sync call would
        # wait (busy_timeout), nor past the call's deadline; then the same error as sync.
        budget = call_budget()
        limit = self.busy_timeout if budget is None else min(self.busy_timeout, budget)
        give_up = time.monotonic() + limit
        delay = 0.0005
        while True:
            try:
                return self._db.aio.call(op, *args)
            except _Locked as exc:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise _translate(exc.__cause__ or exc, self.path, limit) from exc.__cause__
                import asyncio  # imported where used: sync-only start-up (the CLI) stays lean

                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _POLL_CAP)

    def _granted(
        self, key: str, holder: str, ttl: float | None, now: float, waiter: Waiter | None, reply: Any
    ) -> Lease | Busy:
        if isinstance(reply, int):
            if waiter is not None:
                self._db.unregister(waiter)  # served: no more wake-ups for it
            return Lease(key, holder, reply, None if ttl is None else now + ttl, ttl)
        if reply is None:  # the hold ended between our two statements: try again at once
            return Busy(None, 0.0)
        return Busy(decode(reply[0]), self._db.retry_after(waiter, reply[1], now))

    def _prepare_acquire(self, key: str, ttl: float | None, waiter: Waiter | None) -> bytes:
        keyb = encode(key)
        if waiter is not None:
            self._db.register(keyb, waiter)
        if ttl is None:
            self._db.ensure_owner()
        return keyb

    # ------------------------------------------------------------------ primitives

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        keyb, now = self._prepare_acquire(key, ttl, waiter), time.time()
        reply = self._call(_op_acquire, keyb, encode(holder), ttl, now)
        return self._granted(key, holder, ttl, now, waiter, reply)

    async def _atry_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        keyb, now = self._prepare_acquire(key, ttl, waiter), time.time()
        try:
            reply = self._db.aio.call(_op_acquire, keyb, encode(holder), ttl, now)
        except _Locked:
            return Busy(None, _POLL_FIRST * 4)
        return self._granted(key, holder, ttl, now, waiter, reply)

    def _release(self, key: str, holder: str) -> str | None:
        keyb = encode(key)
        other = self._call(_op_release, keyb, encode(holder), time.time())
        return self._released(keyb, other)

    async def _arelease(self, key: str, holder: str) -> str | None:
        keyb = encode(key)
        other = await self._acall(_op_release, keyb, encode(holder), time.time())
        return self._released(keyb, other)

    def _released(self, keyb: bytes, other: bytes | None) -> str | None:
        if other is None:
            self._db.signal(keyb)
            return None
        return decode(other)

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        if ttl is None:
            self._db.ensure_owner()
        now = time.time()
        done = self._call(_op_extend, encode(key), encode(holder), token, ttl, now)
        return None if not done else Lease(key, holder, token, None if ttl is None else now + ttl, ttl)

    async def _aextend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        if ttl is None:
            self._db.ensure_owner()
        now = time.time()
        done = await self._acall(_op_extend, encode(key), encode(holder), token, ttl, now)
        return None if not done else Lease(key, holder, token, None if ttl is None else now + ttl, ttl)

    def _holder(self, key: str) -> str | None:
        hold = self._call(_op_hold, encode(key), time.time())
        return None if hold is None else decode(hold[0])

    async def _aholder(self, key: str) -> str | None:
        hold = await self._acall(_op_hold, encode(key), time.time())
        return None if hold is None else decode(hold[0])

    def _inspect(self, key: str) -> LockInfo | None:
        row = self._call(_op_inspect, encode(key), time.time())
        return None if row is None else _info(key, row)

    async def _ainspect(self, key: str) -> LockInfo | None:
        row = await self._acall(_op_inspect, encode(key), time.time())
        return None if row is None else _info(key, row)

    def _list(self, prefix: str | None) -> list[LockInfo]:
        rows = self._call(_op_list, encode(prefix or ""), time.time())
        return [_info(decode(bytes(row[0])), row[1:]) for row in rows]

    async def _alist(self, prefix: str | None) -> list[LockInfo]:
        rows = await self._acall(_op_list, encode(prefix or ""), time.time())
        return [_info(decode(bytes(row[0])), row[1:]) for row in rows]

    def _force_release(self, key: str) -> bool:
        keyb = encode(key)
        return self._forced(keyb, self._call(_op_force, keyb, time.time()))

    async def _aforce_release(self, key: str) -> bool:
        keyb = encode(key)
        return self._forced(keyb, await self._acall(_op_force, keyb, time.time()))

    def _forced(self, keyb: bytes, done: bool) -> bool:
        if done:
            self._db.signal(keyb)
        return done

    def _watch(self, key: str, waiter: Waiter | None) -> Busy | None:
        keyb = encode(key)
        if waiter is not None:
            self._db.register(keyb, waiter)
        now = time.time()
        hold = self._call(_op_hold, keyb, now)
        return None if hold is None else Busy(decode(hold[0]), self._db.retry_after(waiter, hold[1], now))

    async def _awatch(self, key: str, waiter: Waiter | None) -> Busy | None:
        keyb = encode(key)
        if waiter is not None:
            self._db.register(keyb, waiter)
        now = time.time()
        try:
            hold = self._db.aio.call(_op_hold, keyb, now)
        except _Locked:
            return Busy(None, _POLL_FIRST * 4)
        return None if hold is None else Busy(decode(hold[0]), self._db.retry_after(waiter, hold[1], now))

    def _withdraw(self, key: str, waiter: Waiter) -> Lease | None:
        self._db.unregister(waiter)
        return None


def default_path() -> str:
    """The embedded default store: ``platformdirs.user_state_dir("txlock")/locks.db``.

    The directory is created (mode 0700) if missing.
    """
    import platformdirs

    directory = platformdirs.user_state_dir("txlock")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, "locks.db")
