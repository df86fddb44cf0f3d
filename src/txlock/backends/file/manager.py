"""The filesystem lock manager: its configuration, and its primitives.

Each primitive does its work when called (the store is local and never blocks for long: a
``flock`` held for microseconds) and returns an answered request, ``(answer, None)``: the
backend needs no transport.
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote, urlencode

from txlock._errors import BackendError, ConfigurationError
from txlock._flows import Request
from txlock._hostclock import host_now
from txlock._manager import BaseLockManager
from txlock._options import common_options, local_path, parse_bool
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import decode, encode
from txlock._waiter import Waiter
from txlock.backends.file import _directory
from txlock.backends.file._access import RecordUnderLock, current, info, lease, mark_waiting, peek, ring_and_write
from txlock.backends.file._attempt import attempt
from txlock.backends.file._directory import DirectoryState, attach, detach, detach_pending, translate
from txlock.backends.file._record import NAME_PATTERN, NO_LIFE, key_filename
from txlock.backends.file._wakeups import life_channel

__all__ = ["FileSystemLockManager"]

P = ParamSpec("P")
R = TypeVar("R")


def _primitive(
    doing: str,
) -> Callable[
    [Callable[Concatenate[FileSystemLockManager, P], R]], Callable[Concatenate[FileSystemLockManager, P], Request[R]]
]:
    """A primitive that does its work when called: its answer becomes its request, and an
    ``OSError`` a txlock error naming the directory and what was being done."""

    def decorate(
        fn: Callable[Concatenate[FileSystemLockManager, P], R],
    ) -> Callable[Concatenate[FileSystemLockManager, P], Request[R]]:
        @functools.wraps(fn)
        def primitive(self: FileSystemLockManager, /, *args: P.args, **kwargs: P.kwargs) -> Request[R]:
            try:
                return fn(self, *args, **kwargs), None
            except BackendError:
                raise
            except OSError as exc:
                raise translate(exc, self.directory, doing) from exc

        return primitive

    return decorate


class FileSystemLockManager(BaseLockManager):
    """Locks shared by the processes of one host, kept as files in one directory.

    ``FileSystemLockManager("/var/lock/myapp")`` or ``file:///var/lock/myapp``. The
    directory is created (mode ``0o700`` unless ``mode`` says otherwise) if missing; its
    parent must exist (a typo must not make a separate set of locks) unless
    ``create=True`` (``?create=true``) asks for the missing parents too. Every
    manager, copy and process naming the same directory shares the same locks. It is a
    drop-in for Prefect's ``FileSystemLockManager(lock_files_directory)``.

    Guarantees and limits:

    * Mutual exclusion across the threads, tasks and processes of a host: every change to a
      key's record is made under an exclusive ``flock`` of its file, so two callers never
      both win a grant, and breaking a dead or expired hold is atomic (the breaker re-reads
      the record under the lock, so it can never remove a fresh hold that replaced it).
    * No torn reads: records carry CRC-32 checks; a reader that catches a record mid-write
      re-reads it under a shared lock. A record that is still not whole (a writer killed
      mid-write, a foreign file) reads as a broken hold and is repaired by the next writer;
      a symlink, directory or other non-regular file at a key's name is never followed or
      written through: writers raise :class:`~txlock.CorruptRecord` naming it.
    * ``hold_timeout=None``: the hold lasts until released or until the process that took it
      exits; the kernel drops that process's ``flock`` on its life file at once, and inotify
      wakes the waiters, so a dead process's holds are taken over within milliseconds (the
      safety net is a re-check every 0.25 s per key and process). A child made with ``fork`` cannot end or keep
      alive its parent's holds. ``hold_timeout=T``: the hold ends T seconds after the grant
      on the host clock (:mod:`txlock._hostclock`: boot time, the same for every process of
      the host whatever its wall clock or time namespace), whatever happens to its process.
      A record of another boot or of an older txlock, and every record outside Linux, is
      judged on its wall-clock expiry (which a step of the system clock moves).
    * Fencing tokens strictly increase per key, across processes and restarts (the counter
      lives in the record; removing a free record raises the directory's high-water mark
      first). Deleting the directory restarts them.
    * Waiters sleep on inotify wake-ups (Linux), else the first waiter of a key polls with a
      backoff from 1 ms to 50 ms; what needs a look without a signal is asked of one timer per
      key and process, so waiting costs the same for one waiter or thousands.
      A release rings one process, that of the oldest waiter, which wakes one local waiter;
      async waiters hold no thread. Waiters are not served in strict arrival order (the
      process that just released a key may take it again at once), but none starves: a
      waiter that has waited 50 ms reserves the next grant unless an older waiter holds the
      reservation, and is served once the reservation is 5 ms old. ``LockInfo.waiters`` is
      ``None`` (waiters in other processes are not counted).
    * Files: one record per key (removed about 5 s after its key is freed by this process,
      if still free), one life file per process, one ``tokens`` file. Descriptors: two per
      directory and process, the life file, and the (unlocked) descriptors of the last
      ``FD_CACHE`` keys used; none per held lock.
    * Local file systems only: ``flock`` and inotify do not span hosts over NFS.
    """

    schemes = ("file",)
    capabilities = Capabilities(
        processes=True,
        notes=(
            "waiters in other processes are not counted",
            "no strict FIFO order; a waiter of 50 ms reserves the next grant",
        ),
    )
    _bounds_calls = False  # local files: no call waits on another host

    def __init__(
        self, directory: str | os.PathLike[str], *, mode: int = 0o700, create: bool = False, **options: Any
    ) -> None:
        super().__init__(**options)
        if not isinstance(create, bool):
            raise TypeError(f"create must be a bool, not {type(create).__name__}")
        self.create = create
        raw = os.fspath(directory)
        if not isinstance(raw, str):
            raise TypeError(f"directory must be a str or os.PathLike[str], not {type(directory).__name__}")
        if not raw:
            raise ConfigurationError("directory must not be empty; name the lock directory")
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"mode must be an int such as 0o700, not {type(mode).__name__}")
        if mode & ~0o7777 or mode & 0o700 != 0o700:
            raise ConfigurationError(f"mode {mode:#o} must give the owner rwx (0o700) and stay within 0o7777")
        self.directory = os.path.abspath(os.path.expanduser(raw))
        self.mode = mode
        self._state: DirectoryState | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._directory_state()

    def _directory_state(self) -> DirectoryState:
        """What this process keeps for the directory (attached again after ``close``)."""
        state = self._state
        if state is None:
            state = attach(self.directory, self.mode, self.create)
            self._finalizer = weakref.finalize(self, _directory.pending.append, state)
            self._state = state
        return state

    def close(self) -> None:
        """Let go of this manager's share of the directory state; holds are not released.

        The directory descriptor and this process's life file are shared by every manager
        of the process on the directory, and are let go of with the last one only if no hold
        of this process is bound to its life. A closed manager reopens on next use.
        """
        finalizer, self._finalizer, state, self._state = self._finalizer, None, self._state, None
        if finalizer is not None and finalizer.detach() is not None and state is not None:
            detach(state)
        detach_pending()

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        return (self.directory, self.mode)

    def _init_kwargs(self) -> dict[str, Any]:
        return {"directory": self.directory, "mode": self.mode, "create": self.create, **self._common_kwargs()}

    def _url(self, *, redact: bool) -> str:
        query = self._common_query()
        if self.create:
            query = {"create": "true", **query}
        if self.mode != 0o700:
            query = {"mode": f"{self.mode:o}", **query}
        text = urlencode(query)
        return "file://" + quote(self.directory, safe="/") + (f"?{text}" if text else "")

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> FileSystemLockManager:
        path = local_path(url, "file", "file:///absolute/path")
        kwargs = common_options(options, allowed=("mode", "create"))
        if "create" in options:
            kwargs["create"] = parse_bool("create", options["create"])
        if "mode" in options:
            try:
                kwargs["mode"] = int(options["mode"], 8)
            except ValueError:
                raise ConfigurationError(f"option mode={options['mode']!r} is not an octal mode such as 700") from None
        return cls(path, **kwargs)

    def _parked_here(self, key: str) -> int:
        return self._directory_state().wakeups.parked(key_filename(key))

    def _under_lock(self, key: str) -> RecordUnderLock:
        """``with self._under_lock(key) as locked:`` see :class:`RecordUnderLock`."""
        state = self._directory_state()
        return RecordUnderLock(state, self.directory, key_filename(key), key)

    def path_for(self, key: str) -> str:
        """The path of ``key``'s record file (a hash of the key, always inside the directory)."""
        return os.path.join(self.directory, key_filename(key))

    # ------------------------------------------------------------------ primitives

    @_primitive("acquire a lock")
    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        state = self._directory_state()
        name = key_filename(key)
        wakeups = state.wakeups
        entry = wakeups.register(name, waiter) if waiter is not None else None
        while True:
            outcome = attempt(state, self.directory, name, key, holder, ttl, entry)
            if isinstance(outcome, Lease):
                if waiter is not None:
                    wakeups.unregister(waiter)
                return outcome
            busy, life = outcome
            if waiter is None or entry is None or life is None or life_channel(life) in entry.channels:
                return busy
            # Watch the holder's process, then look again: a death between the attempt and
            # the registration must not go unnoticed until the safety net.
            wakeups.register(life_channel(life), waiter)
            if state.lives.alive(life):
                return busy

    @_primitive("release a lock")
    def _release(self, key: str, holder: str) -> str | None:
        with self._under_lock(key) as locked:
            if locked is None:
                return None
            state, record = locked.state, locked.record
            if record.held and state.live(record, time.time()) and record.holder != encode(holder):
                return decode(record.holder)
            if not (record.held or locked.dirty):
                return None
            dead = record.life if record.held else NO_LIFE
            record.free()
            ring_and_write(state, locked.fd, record, time.time())
        if dead != NO_LIFE and not state.lives.alive(dead):
            state.lives.bury(dead)
        state.freed_here(locked.name)
        return None

    @_primitive("renew a lock")
    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        with self._under_lock(key) as locked:
            if locked is None:
                return None
            state, record, now = locked.state, locked.record, time.time()
            if not (state.live(record, now) and record.holder == encode(holder) and record.counter == token):
                return None
            host = None if ttl is None else host_now()
            record.bind(ttl, now, state.lives.own_id() if ttl is None else NO_LIFE, host)
            locked.write()
        state.hold_bound(locked.name, ttl)
        return lease(key, holder, record)

    @_primitive("read a lock")
    def _holder(self, key: str) -> str | None:
        record = current(self._directory_state(), key)
        return None if record is None else decode(record.holder)

    @_primitive("inspect a lock")
    def _inspect(self, key: str) -> LockInfo | None:
        record = current(self._directory_state(), key)
        return None if record is None else info(record)

    @_primitive("list the locks")
    def _list(self, prefix: str | None) -> list[LockInfo]:
        state = self._directory_state()
        with os.scandir(state.fd) as entries:
            names = [entry.name for entry in entries if NAME_PATTERN.fullmatch(entry.name)]
        now = time.time()
        found: list[tuple[str, LockInfo]] = []
        for name in names:
            record = peek(state, name)
            if record is None or not state.live(record, now):
                continue
            try:
                key = decode(record.key)
            except UnicodeDecodeError:
                continue
            if key_filename(key) != name or (prefix is not None and not key.startswith(prefix)):
                continue  # a record copied under a foreign name is not a lock
            found.append((key, info(record)))
        found.sort(key=lambda item: item[0])
        return [lock for _, lock in found]

    @_primitive("force-release a lock")
    def _force_release(self, key: str) -> bool:
        with self._under_lock(key) as locked:
            if locked is None:
                return False
            state, record, now = locked.state, locked.record, time.time()
            was = state.live(record, now)
            if not (record.held or locked.dirty):
                return False
            record.free()
            ring_and_write(state, locked.fd, record, now)
        state.freed_here(locked.name)
        return was

    @_primitive("watch a lock")
    def _watch(self, key: str, waiter: Waiter | None) -> Busy | None:
        state = self._directory_state()
        name = key_filename(key)
        wakeups = state.wakeups
        entry = wakeups.register(name, waiter, acquirer=False) if waiter is not None else None
        while True:
            record = current(state, key) if entry is None else mark_waiting(state, self.directory, name, key, entry)
            if record is None:
                if entry is not None:
                    wakeups.wake_watchers(name)  # the key's timer woke only this watcher
                return None
            retry = wakeups.longest_sleep(entry)
            if record.expires_at:
                retry = min(retry, max(record.ends_in(time.time(), host_now()), 0.0005))
            if entry is not None:
                retry = wakeups.look_again(name, retry, entry)  # one timer per key, not one per watcher
            busy = Busy(decode(record.holder), retry)
            channel = life_channel(record.life)
            if waiter is None or entry is None or record.expires_at or channel in entry.channels:
                return busy
            wakeups.register(channel, waiter)  # then look again (see _try_acquire)

    @_primitive("withdraw a waiter")
    def _withdraw(self, key: str, waiter: Waiter) -> Lease | None:
        state = self._directory_state()
        wakeups = state.wakeups
        entry = wakeups.unregister(waiter)
        if entry is None:
            return None
        name = key_filename(key)
        if entry.acquirer:
            wakeups.wake_next(name, released=False)  # it may have been woken in vain: the next local waiter tries
        others = wakeups.parked(name) > 0
        if others and not entry.reserved:
            return None
        # Give up our reservation, so the next waiter need not wait for it to go stale, and
        # our bell if no other waiter of this process waits, so no release rings in vain.
        with RecordUnderLock(state, self.directory, name, key) as locked:
            if locked is None:
                return None
            record, changed = locked.record, False
            if record.reservation == entry.ident:
                record.unreserve()
                changed = True
            own = state.lives.own
            if not others and own is not None and record.drop_bell(own):
                changed = True
            now = time.time()
            if changed and state.live(record, now):
                locked.write()
            elif changed:
                ring_and_write(state, locked.fd, record, now)
        return None
