"""The SQLite manager: its primitives, each written once, and its one sync and one async transport.

A primitive returns a request whose *work* is ``(operation, args, locked_is_busy)``: an
operation of :mod:`._operations` and its arguments, run on the sync connection by
:meth:`~SQLiteLockManager._exec` or on the async one by :meth:`~SQLiteLockManager._aexec`.
``locked_is_busy`` is for the async transport only (see there).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias
from urllib.parse import quote, urlencode

from txlock._deadline import call_budget
from txlock._errors import ConfigurationError
from txlock._flows import NOTHING, Request
from txlock._manager import BaseLockManager
from txlock._options import common_options, local_path, parse_seconds
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import decode, encode
from txlock._waiter import Waiter
from txlock.backends.sqlite import _operations
from txlock.backends.sqlite._database import POLL_CAP, POLL_FIRST, Locked, translate, use_database
from txlock.backends.sqlite._schema import check_path

__all__ = ["SQLiteLockManager"]

_DEFAULT_BUSY_TIMEOUT = 5.0

#: ``(operation, args, locked_is_busy)``: what a primitive asks the database to do.
Work: TypeAlias = tuple[Callable[..., Any], tuple[Any, ...], bool]


class _Reply:
    """A reply that does not come from the database."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The async transport's reply to a ``locked_is_busy`` work that found the database locked.
LOCKED: Final = _Reply("LOCKED")
#: What an attempt or a watch answers then: busy, look again soon (the waiting loop bounds it).
_BUSY_WHILE_LOCKED: Final = Busy(None, POLL_FIRST * 4)


def _info(key: str, row: tuple[Any, ...]) -> LockInfo:
    holder, token, acquired_at, expires_at = row
    return LockInfo(key, decode(bytes(holder)), int(token), float(acquired_at), expires_at, None)


def _infos(rows: list[tuple[Any, ...]]) -> list[LockInfo]:
    return [_info(decode(bytes(row[0])), row[1:]) for row in rows]


def _holder_name(hold: tuple[bytes, float | None] | None) -> str | None:
    return None if hold is None else decode(hold[0])


def _inspected(key: str) -> Callable[[tuple[Any, ...] | None], LockInfo | None]:
    return lambda row: None if row is None else _info(key, row)


class SQLiteLockManager(BaseLockManager):
    """Locks shared by the processes of one host through one SQLite database file.

    ``SQLiteLockManager("/path/to/locks.db")`` or ``sqlite:///path/to/locks.db``. The file
    (and its directory's ``locks.db-wal``, ``-shm`` and ``-txlock/``) is created on first use;
    the directory must exist and be writable. With no URL, :func:`txlock.from_url` uses the
    embedded default store, a file in the user's state directory (see
    :func:`txlock.default_url`).

    Guarantees and limits:

    * Every primitive is one short write transaction (one statement in autocommit mode,
      which SQLite runs like ``BEGIN IMMEDIATE``); nothing is held open while a caller waits.
      A busy database is waited for up to ``busy_timeout`` seconds (default 5), then
      :class:`~txlock.BackendUnavailable` names the file.
    * Fencing tokens strictly increase per key across all grants, also across restarts
      (the counter lives in the database).
    * The table holds no more than the holds: a release deletes its row (its token goes
      to the table's high-water mark, which seeds the next row); rows of expired holds and
      dead processes are swept every 1024th release and when a process closes the database.
    * A hold without ``hold_timeout`` ends when its process dies: the process's ``flock``
      on its owner file is dropped by the kernel, and the next statement that meets the hold
      treats it as free; waiters are woken at once (inotify). There is no heartbeat, so a
      paused or slow process never loses its holds, and no clock is involved.
    * A hold with ``hold_timeout`` ends that many seconds after its grant on the host clock
      (:mod:`txlock._hostclock`: boot time, the same for every process of the host whatever
      its wall clock or time namespace). A row of another boot or of an older txlock, and
      every row outside Linux, is judged on its wall-clock ``expires_at``.
    * Waiters in any process are woken within milliseconds of a release (Linux inotify;
      elsewhere an adaptive poll capped at 25 ms): the first waiter of the key in each
      process, so waiters of one process are served in arrival order. No strict FIFO across
      processes, but no starvation either: each release lets each process's first waiter try.
      Waiting costs one look a second per key and process (the safety net), however many wait.
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
        check_path(self.path)
        self._database = use_database(self.path, self.busy_timeout)
        self._closed = False
        try:
            self._database.open()
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
        path = local_path(url, "SQLite", "sqlite:///absolute/path/to/locks.db")
        kwargs = common_options(options, allowed=("busy_timeout",))
        if "busy_timeout" in options:
            busy = parse_seconds("busy_timeout", options["busy_timeout"])
            kwargs["busy_timeout"] = _DEFAULT_BUSY_TIMEOUT if busy is None else busy
        return cls(path, **kwargs)

    def close(self) -> None:
        """Close this process's connections to the file once no manager uses them, sweeping
        the rows of expired and dead holds first. Holds stay; the proof of life of this
        process's process-bound holds stays while any exists."""
        if self._closed:
            return
        self._closed = True
        self._database.leave()

    def _parked_here(self, key: str) -> int:
        return self._database.parked(encode(key))

    # ------------------------------------------------------------------ transport

    def _exec(self, work: Work) -> Any:
        operation, args, _ = work  # the sync connection waits busy_timeout, then raises
        return self._database.sync_connection.call(operation, args)

    async def _aexec(self, work: Work) -> Any:
        # The async connection waits at most 5 ms inside SQLite (the loop must not block).
        # A locked database is then either an answer (LOCKED: an attempt or a watch, whose
        # waiting loop looks again anyway and whose timeout bounds it) or waited for: yield
        # to the loop and try again, in all no longer than a sync call would wait
        # (busy_timeout), nor past the call's deadline; then the same error as sync.
        operation, args, locked_is_busy = work
        connection = self._database.async_connection
        budget = call_budget()
        limit = self.busy_timeout if budget is None else min(self.busy_timeout, budget)
        give_up = time.monotonic() + limit
        delay = POLL_FIRST
        while True:
            try:
                return connection.call(operation, args)
            except Locked as exc:
                if locked_is_busy:
                    return LOCKED
                left = give_up - time.monotonic()
                if left <= 0:
                    raise translate(exc.__cause__ or exc, self.path, limit) from exc.__cause__
                import asyncio  # imported where used: sync-only start-up (the CLI) stays lean

                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, POLL_CAP)

    # ------------------------------------------------------------------ primitives

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Request[Lease | Busy]:
        database = self._database
        key_bytes = encode(key)
        if waiter is not None:
            database.register(key_bytes, waiter)
        if ttl is None:
            database.ensure_owner()
        now = time.time()

        def read(reply: Any) -> Lease | Busy:
            if type(reply) is int:  # the granted token
                if waiter is not None:
                    database.unregister(waiter)  # served: no more wake-ups for it
                return Lease(key, holder, reply, None if ttl is None else now + ttl, ttl)
            if reply is None:  # the hold ended between our two statements: try again at once
                return Busy(None, 0.0)
            if reply is LOCKED:
                return _BUSY_WHILE_LOCKED
            return Busy(decode(reply[0]), database.retry_after(waiter, reply[1]))

        return (_operations.acquire, (key_bytes, encode(holder), ttl, now), True), read

    def _release(self, key: str, holder: str) -> Request[str | None]:
        key_bytes = encode(key)

        def read(other: bytes | None) -> str | None:
            if other is None:
                self._database.signal(key_bytes)
                return None
            return decode(other)

        return (_operations.release, (key_bytes, encode(holder), time.time()), False), read

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Request[Lease | None]:
        if ttl is None:
            self._database.ensure_owner()
        now = time.time()

        def read(done: bool) -> Lease | None:
            return Lease(key, holder, token, None if ttl is None else now + ttl, ttl) if done else None

        return (_operations.extend, (encode(key), encode(holder), token, ttl, now), False), read

    def _holder(self, key: str) -> Request[str | None]:
        return (_operations.hold, (encode(key), time.time()), False), _holder_name

    def _inspect(self, key: str) -> Request[LockInfo | None]:
        return (_operations.inspect, (encode(key), time.time()), False), _inspected(key)

    def _list(self, prefix: str | None) -> Request[list[LockInfo]]:
        return (_operations.list_holds, (encode(prefix or ""), time.time()), False), _infos

    def _force_release(self, key: str) -> Request[bool]:
        key_bytes = encode(key)

        def read(done: bool) -> bool:
            if done:
                self._database.signal(key_bytes)
            return done

        return (_operations.force_release, (key_bytes, time.time()), False), read

    def _watch(self, key: str, waiter: Waiter | None) -> Request[Busy | None]:
        database = self._database
        key_bytes = encode(key)
        if waiter is not None:
            database.register(key_bytes, waiter, acquirer=False)
        now = time.time()

        def read(hold: Any) -> Busy | None:
            if hold is None:
                if waiter is not None:
                    database.wake_watchers(key_bytes)  # the key's timer may have woken only this one
                return None
            if hold is LOCKED:
                return _BUSY_WHILE_LOCKED
            return Busy(decode(hold[0]), database.retry_after(waiter, hold[1]))

        return (_operations.hold, (key_bytes, now), True), read

    def _withdraw(self, key: str, waiter: Waiter) -> Request[Lease | None]:
        self._database.withdraw(waiter)
        return NOTHING

    def _sweep(self) -> Request[None]:
        """Not a primitive: delete the free, expired and dead rows now (as every 1024th
        release and the last close of a process do), keeping their tokens in the floor."""
        return (_operations.sweep, (time.time(),), False), _nothing


def _nothing(reply: object) -> None:
    return None
