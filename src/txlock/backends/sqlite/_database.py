"""What one process knows about one SQLite lock database: its two connections, the proof of
life of its process-bound holds, its waiters and the signal files that wake them.

One :class:`Database` per process, file and busy timeout, shared by every manager (and copy)
naming them, kept in a :class:`~txlock._per_process.PerProcess` table that resets it in a
child made by ``fork``.

* **Connections.** One for sync calls (it waits ``busy_timeout`` inside SQLite) and one for
  async calls (it waits at most 5 ms, so the event loop never blocks for longer), each
  serialized by a mutex. SQLite errors are translated here, at one place (:func:`translate`).
* **Proof of life** (:mod:`txlock._liveness`). Holds without ``hold_timeout`` carry the owner
  id of their process. The process keeps an exclusive ``flock`` on its owner file
  ``<db>-txlock/o-<owner>`` for as long as it lives; the kernel drops it the instant the
  process dies, so the SQL function ``txlock_alive`` (a non-blocking probe of that ``flock``)
  sees the hold dead at once.
* **Waking waiters.** A release touches ``<db>-txlock/s-<bucket>``; the death of an owner
  closes its ``o-`` file (``IN_CLOSE_WRITE``); one inotify thread per process wakes, for each
  key of that bucket (or every key), the first local waiter that acquires it and every one
  that only watches it. A look that finds a key held asks the key's *timer* (one per key and
  process, :class:`~txlock._waitlist.HoldTimers`) to wake its first waiter again when the
  hold runs out, or after the safety net; no waiter looks again on a timer of its own, so
  the cost of waiting does not grow with the number of waiters. Without inotify, that timer
  polls with an adaptive backoff capped at 25 ms.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from txlock import _inotify
from txlock._errors import BackendError, BackendUnavailable, CorruptRecord
from txlock._liveness import INT_63, LifeFiles
from txlock._per_process import PerProcess
from txlock._waiter import Waiter
from txlock._waitlist import HoldTimers, first_acquirer_and_watchers
from txlock.backends.sqlite import _operations
from txlock.backends.sqlite._schema import check_header, prepare

__all__ = [
    "ASYNC_BUSY_TIMEOUT",
    "POLL_CAP",
    "POLL_FIRST",
    "WAITER_SLEEP",
    "Connection",
    "Database",
    "Locked",
    "Waiting",
    "bucket_of",
    "translate",
    "use_database",
]

log = logging.getLogger("txlock.sqlite")

T = TypeVar("T")

#: The async connection blocks its event loop for at most about this long on a busy
#: database; the async transport then backs off with ``asyncio.sleep``.
ASYNC_BUSY_TIMEOUT = 0.005
#: A key's first waiter re-checks at least this often even when inotify promises a wake-up
#: (the key's timer wakes it: one look per key and process, however many wait).
_SAFETY_NET = 1.0
#: The longest any single waiter sleeps by itself: a last resort only (see ``_SAFETY_NET``).
WAITER_SLEEP = 60.0
#: Without inotify: first poll interval and cap of the adaptive backoff.
POLL_FIRST, POLL_CAP = 0.0005, 0.025
#: Release signals are spread over this many files (by CRC32 of the key).
_BUCKETS = 64

_WATCH_MASK = (
    _inotify.IN_ATTRIB | _inotify.IN_CLOSE_WRITE | _inotify.IN_CREATE | _inotify.IN_MOVED_TO | _inotify.IN_ONLYDIR
)


def bucket_of(key: bytes) -> int:
    """The signal file (and waiter channel) of ``key``."""
    return zlib.crc32(key) % _BUCKETS


# ---------------------------------------------------------------------- errors (the one translation point)


class Locked(BackendUnavailable):
    """The database stayed locked by another connection for longer than the busy timeout."""


_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def translate(exc: BaseException, path: str, busy: float) -> BackendError:
    """The txlock error for ``exc``, raised by SQLite (or the OS) on the database ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in _BUSY_CODES:
        return Locked(
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


# ---------------------------------------------------------------------- connections


class Connection:
    """One SQLite connection and the mutex that serializes its use by the threads of a process."""

    def __init__(self, database: Database, busy: float) -> None:
        self.database = database
        self.busy = busy
        self.mutex = threading.Lock()
        self.handle: sqlite3.Connection | None = None
        self.noted = 0

    def note(self, value: int) -> int:
        """The SQL function ``txlock_note``: remember ``value`` (a token) and return it."""
        self.noted = value
        return value

    def _open(self) -> sqlite3.Connection:
        database = self.database
        check_header(database.path)  # before SQLite sees it, on every connection (it may be replaced)
        handle = sqlite3.connect(database.path, timeout=self.busy, isolation_level=None, check_same_thread=False)
        try:
            handle.create_function("txlock_alive", 1, database.alive)
            handle.create_function("txlock_note", 1, self.note)
            database.prepared(handle)
            handle.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            handle.close()
            raise
        self.handle = handle
        return handle

    def call(self, operation: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Run ``operation(self, handle, *args)`` (see :mod:`._operations`) on this connection."""
        with self.mutex:
            try:
                handle = self.handle or self._open()
                cache = self.database.alive_cache
                if cache:
                    cache.clear()
                try:
                    return operation(self, handle, *args)
                except BaseException:
                    if handle.in_transaction:
                        handle.rollback()
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise translate(exc, self.database.path, self.busy) from exc

    def close(self) -> None:
        with self.mutex:
            if self.handle is not None:
                self.handle.close()
                self.handle = None

    def abandon(self) -> None:
        """In a child made by ``fork``: forget the parent's connection without closing it
        (SQLite would tidy up files the parent still uses) and never use it."""
        if self.handle is not None:
            _abandoned.append(self.handle)
        self.handle = None
        self.mutex = threading.Lock()


#: Connections inherited from the parent process: kept open and unused (see ``abandon``).
_abandoned: list[sqlite3.Connection] = []


# ---------------------------------------------------------------------- one database, in one process


class Waiting:
    """What the database knows of a registered waiter (``waiter.data``): its key and bucket,
    whether it acquires (else it only waits for the key to be free), and how many times it
    polled (the backoff of the key's timer, when there is no inotify)."""

    __slots__ = ("acquirer", "bucket", "key", "polls")

    def __init__(self, key: bytes, acquirer: bool) -> None:
        self.key = key
        self.bucket = bucket_of(key)
        self.acquirer = acquirer
        self.polls = 0


class Database:
    """What one process knows about one database file: its connections, its owner file
    (the proof of life of this process's holds), its local waiters and signal files."""

    def __init__(self, path: str, busy: float) -> None:
        self.path = path
        self.sidecar = path + "-txlock"
        self.users = 0  # managers of this process using it
        self.users_mutex = threading.Lock()
        self.ready_mutex = threading.Lock()
        self.sync_connection = Connection(self, busy)
        self.async_connection = Connection(self, ASYNC_BUSY_TIMEOUT)
        # Owner files are readable by all, so that processes of other users sharing the
        # database can probe them; an unsure probe reads as alive: it must never free a hold.
        self.lives = LifeFiles(self.sidecar, INT_63, mode=0o644, create_directory=True, sweep_limit=None,
                               on_error="alive")
        self.alive_cache: dict[int, bool] = {}  # cleared before every operation
        self._reset_waiters()
        self.signal_fds: dict[int, int] = {}
        self.watched = False
        self.releases = 0

    # -- users, connections and the schema

    def use(self) -> Database:
        with self.users_mutex:
            self.users += 1
        return self

    def leave(self) -> None:
        """A manager is closed: once no manager of this process uses the database, sweep the
        rows of expired and dead holds, drop the proof of life if no hold needs it, and close
        the connections."""
        with self.users_mutex:
            self.users -= 1
            last = self.users <= 0
        if last:
            self.sweep_quietly()
            self.release_owner()
            self.sync_connection.close()
            self.async_connection.close()

    def sweep_quietly(self) -> None:
        """Delete the rows of expired holds and of dead processes (crashed holders leave
        them; releases delete their own rows), if the sync connection is open and the write
        lock is free within :data:`~._operations.CLOSING_BUSY_TIMEOUT`; else leave them to
        the next sweep. Never raises a backend error: closing must not fail for this."""
        if self.sync_connection.handle is None:
            return  # never opened in this process (or after fork): not worth opening now
        try:
            self.sync_connection.call(_operations.sweep_before_closing, (time.time(),))
        except BackendError as exc:
            log.debug("left the sweep of %s to a later close (%s)", self.path, exc)

    def prepared(self, handle: sqlite3.Connection) -> None:
        """Check (or create) the schema on every new connection: the file may have been
        replaced since the last one."""
        with self.ready_mutex:
            prepare(handle, self.path)
            os.makedirs(self.sidecar, exist_ok=True)

    def open(self) -> None:
        """Open the sync connection now, so a bad path fails at construction."""
        self.sync_connection.call(_operations.nothing, ())

    # -- proof of life

    @property
    def owner(self) -> int:
        """The owner id of this process for this database (0: none yet)."""
        return self.lives.own or 0

    def ensure_owner(self) -> int:
        """The owner id of this process, creating (and ``flock``-ing) its owner file on first use."""
        own = self.lives.own
        if own is not None:
            return own
        try:
            return self.lives.own_id()
        except OSError as exc:
            raise BackendError(
                f"cannot create the owner file of SQLite lock database {self.path} ({exc}); "
                f"the directory {self.sidecar} must be writable by this process"
            ) from exc

    def alive(self, owner: int | None) -> bool:
        """The SQL function ``txlock_alive``: whether the process of ``owner`` still lives.
        A live owner is probed once per operation, however many of its rows it meets."""
        if owner is None:
            return False
        known = self.alive_cache.get(owner)
        if known is not None:
            return known
        result = self.lives.alive(owner)
        if result:
            self.alive_cache[owner] = True
        return result

    def _still_owns(self, owner: int) -> bool:
        try:
            return self.sync_connection.call(_operations.owns, (owner,))
        except BackendError:
            return False

    def release_owner(self) -> None:
        """Drop this process's proof of life, if it no longer backs any hold."""
        self.lives.release(keep=self._still_owns)

    # -- waking waiters

    def _reset_waiters(self) -> None:
        #: Under ``wait_mutex``: the waiters of each key in arrival order, the keys of each
        #: signal bucket that have waiters, how many waiters of each key only watch it, and
        #: the keys' timers.
        self.wait_mutex = threading.Lock()
        self.keys: dict[bytes, dict[Waiter, Waiting]] = {}
        self.buckets: dict[int, set[bytes]] = {}
        self.watchers: dict[bytes, int] = {}
        self.timers: HoldTimers[bytes] = HoldTimers(
            self.wait_mutex, "txlock sqlite look again", lambda key: key in self.keys, self.wake_timed
        )

    def register(self, key: bytes, waiter: Waiter, acquirer: bool = True) -> None:
        """Have ``waiter`` woken when ``key`` may have been freed (once: it keeps its place)."""
        if waiter.data is None:
            entry = waiter.data = Waiting(key, acquirer)
            with self.wait_mutex:
                local = self.keys.get(key)
                if local is None:
                    local = self.keys[key] = {}
                    self.buckets.setdefault(entry.bucket, set()).add(key)
                local[waiter] = entry
                if not acquirer:
                    self.watchers[key] = self.watchers.get(key, 0) + 1
            if not self.watched:
                self.watched = self._watch()

    def unregister(self, waiter: Waiter) -> Waiting | None:
        """Forget ``waiter`` (served, or leaving); its registration, if it had one."""
        entry = waiter.data
        waiter.data = None
        if not isinstance(entry, Waiting):
            return None
        key = entry.key
        with self.wait_mutex:
            local = self.keys.get(key)
            if local is None or local.pop(waiter, None) is None:
                return None
            if not entry.acquirer:
                left = self.watchers.pop(key, 1) - 1
                if left:
                    self.watchers[key] = left
            if not local:
                del self.keys[key]
                bucket = self.buckets.get(entry.bucket)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del self.buckets[entry.bucket]
                self.timers.cancel(key)
        return entry

    def withdraw(self, waiter: Waiter) -> None:
        """``waiter`` leaves without being served: it may have been woken in vain, so the
        next local waiter that acquires its key looks."""
        entry = self.unregister(waiter)
        if entry is not None and entry.acquirer:
            self._wake(self._first(entry.key, watchers=0))

    def parked(self, key: bytes) -> int:
        """How many waiters of this process are registered on ``key``."""
        return len(self.keys.get(key, ()))

    def _first(self, key: bytes, watchers: int | None) -> list[Waiter]:
        """The first waiter of ``key`` that acquires it, and its first ``watchers`` waiters
        that only watch it (``None``: all), without going through the other acquirers."""
        with self.wait_mutex:
            local = self.keys.get(key)
            if not local:
                return []
            wanted = self.watchers.get(key, 0)
            if watchers is not None:
                wanted = min(wanted, watchers)
            return [waiter for waiter, _ in first_acquirer_and_watchers(local.items(), _acquires, wanted)]

    @staticmethod
    def _wake(waiters: list[Waiter]) -> None:
        for waiter in waiters:
            waiter.wake()

    def wake_key(self, key: bytes) -> None:
        """``key`` may be free: wake its first local acquirer (the others wait for its
        release or withdrawal) and every local waiter that only watches it."""
        if self.keys:  # the common case on a release nobody waits for: no mutex
            self._wake(self._first(key, None))

    def wake_timed(self, key: bytes) -> None:
        """The key's timer: wake its first acquirer and its first watcher to look again."""
        self._wake(self._first(key, 1))

    def wake_watchers(self, key: bytes) -> None:
        """A watcher found ``key`` free: so may the others."""
        if self.watchers.get(key):
            self.wake_key(key)

    def wake_bucket(self, bucket: int) -> None:
        """A key of ``bucket`` was freed (which one, the signal does not say)."""
        with self.wait_mutex:
            keys = list(self.buckets.get(bucket, ()))
        for key in keys:
            self.wake_key(key)

    def wake_all(self) -> None:
        """Every key may have been freed (a holder died, signals were lost)."""
        with self.wait_mutex:
            keys = list(self.keys)
        for key in keys:
            self.wake_key(key)

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
            self.wake_all()
        elif name.startswith(b"s-"):
            with contextlib.suppress(ValueError):
                self.wake_bucket(int(name[2:], 16))
        elif mask & _inotify.IN_CLOSE_WRITE and self.lives.ids.parse(os.fsdecode(name)) is not None:
            self.wake_all()  # a process holding locks died (or exited): one look per key

    def signal(self, key: bytes) -> None:
        """Tell every process that ``key`` was freed: touch its bucket's signal file."""
        bucket = bucket_of(key)
        self.wake_key(key)
        fd = self.signal_fds.get(bucket)
        try:
            if fd is None:
                name = os.path.join(self.sidecar, f"s-{bucket:02x}")
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fd = self.signal_fds.setdefault(bucket, fd)
            os.utime(fd)
        except OSError as exc:  # waiters elsewhere fall back to their safety net
            log.debug("could not signal a release on %s: %s", self.sidecar, exc)

    def retry_after(self, waiter: Waiter | None, left: float | None) -> float:
        """How long a caller sleeps before it looks again, if no signal wakes it first
        (``left``: the seconds the hold lasts still; ``None``: until released or its process
        dies). The key's first local waiter sleeps that long itself (its sleep is the key's
        one timer); a later one asks the key's timer (one per key and process, which wakes the
        key's first waiter, also once the present one is served) and sleeps
        :data:`WAITER_SLEEP` itself."""
        left = math.inf if left is None else max(0.0, left) + 0.0005
        entry = None if waiter is None else waiter.data
        if not isinstance(entry, Waiting):
            return min(left, POLL_FIRST)
        if self.watched:
            seconds = min(left, _SAFETY_NET)
        else:
            entry.polls += 1
            seconds = min(left, POLL_FIRST * 2.0 ** min(entry.polls, 16), POLL_CAP)
        key = entry.key
        with self.wait_mutex:
            local = self.keys.get(key)
            if not local:  # (withdrawn meanwhile)
                return WAITER_SLEEP
            if next(iter(local)) is waiter:
                # The key's first local waiter (the one its timer would wake) keeps the time
                # itself: no hand-off to the lease-watch thread on the path from a hold's end
                # to its take-over (a thread switch; tens of milliseconds under libfaketime).
                return seconds
            self.timers.arm_earliest(key, seconds)  # the earliest look any later waiter asks for
        return WAITER_SLEEP

    # -- fork

    def reset_after_fork(self) -> bool:
        """In a child made by ``fork``: keep the database, but none of the parent's connections,
        proof of life, signal descriptors or waiters."""
        # (The proof of life resets itself: the child neither keeps the parent's holds alive
        # nor ends them, see txlock._liveness.)
        self.sync_connection.abandon()
        self.async_connection.abandon()
        for fd in self.signal_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.signal_fds = {}
        self.ready_mutex = threading.Lock()
        self.users_mutex = threading.Lock()
        self._reset_waiters()  # (the scheduler starts the child with no timers)
        self.watched = False
        self.alive_cache = {}
        return True


# ---------------------------------------------------------------------- the databases of this process

#: By (path, busy timeout).
_databases: PerProcess[tuple[str, float], Database] = PerProcess(after_fork=Database.reset_after_fork)


def use_database(path: str, busy: float) -> Database:
    """The state of this process for the database ``path``, counted as used once more."""
    return _databases.get((path, busy), lambda: Database(path, busy)).use()


def _at_exit() -> None:
    # The descriptors close with the process anyway; deleting the owner files saves the next
    # process a probe each.
    for state in _databases.values():
        own = state.lives.own
        if own is not None:
            with contextlib.suppress(OSError):
                os.unlink(state.lives.file_path(own))


atexit.register(_at_exit)


def _acquires(entry: Waiting) -> bool:
    return entry.acquirer
