"""The in-process backend: one lock-protected table per named store."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from txlock._errors import ConfigurationError
from txlock._manager import BaseLockManager
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._waiter import Waiter

__all__ = ["MemoryLockManager"]

_QUEUED, _GRANTED = 1, 2


class _Hold:
    __slots__ = ("acquired_at", "deadline", "holder", "token", "ttl")

    def __init__(self, holder: str, token: int, deadline: float, ttl: float | None, acquired_at: float) -> None:
        self.holder = holder
        self.token = token
        self.deadline = deadline  # on the store's clock; inf = no expiry
        self.ttl = ttl
        self.acquired_at = acquired_at  # wall clock, for people


class _Store:
    """The table shared by every manager (and copy) that names this store."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mutex = threading.Lock()
        self.holds: dict[str, _Hold] = {}
        self.queues: dict[str, deque[Waiter]] = {}
        self.watchers: dict[str, list[Waiter]] = {}
        self.tokens = itertools.count(1)
        # Injected by tests; the store's own notion of "now" for expiry.
        self.clock: Callable[[], float] = time.monotonic

    def reset_after_fork(self) -> None:
        # The threads and loops that were waiting do not exist in the child.
        self.mutex = threading.Lock()
        self.queues.clear()
        self.watchers.clear()


_stores: dict[str, _Store] = {}
_stores_mutex = threading.Lock()


def _store(name: str) -> _Store:
    store = _stores.get(name)
    if store is None:
        with _stores_mutex:
            store = _stores.setdefault(name, _Store(name))
    return store


def _after_fork() -> None:
    global _stores_mutex
    _stores_mutex = threading.Lock()
    for store in _stores.values():
        store.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork)

_INF = float("inf")


class MemoryLockManager(BaseLockManager):
    """Locks shared by the threads and event loops of one process.

    ``MemoryLockManager()`` (``memory://``) uses the process-wide default store;
    ``MemoryLockManager("name")`` (``memory://name``) an isolated store of that name. Every
    manager naming the same store, and every copy of one (``copy.deepcopy``, ``pickle``
    within the process), sees the same holds.

    Guarantees and limits:

    * Waiters are served strictly first come, first served: a release hands the lock
      directly to the longest waiter, so a newcomer can never overtake a queued waiter.
      Thread waiters and event-loop waiters share one queue per key.
    * No thread is ever started: timed holds expire lazily, and waiters sleep exactly until
      the hold they wait on expires or is released.
    * Fencing tokens come from one counter per store, so they strictly increase per key.
    * Holds live and die with the process. A process started with ``spawn`` sees an empty
      store; a child created by ``fork`` starts with a copy of the parent's holds (and no
      waiters) that is independent of the parent from then on.
    """

    schemes = ("memory",)
    capabilities = Capabilities(fifo=True, injectable_clock=True, counts_waiters=True)

    def __init__(self, name: str = "", **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.name = name
        self._store = _store(name)

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        return (self.name,)

    def _init_kwargs(self) -> dict[str, Any]:
        return {"name": self.name, **self._common_kwargs()}

    def _url(self, *, redact: bool) -> str:
        from urllib.parse import quote, urlencode

        query = urlencode(self._common_query())
        return f"memory://{quote(self.name, safe='')}" + (f"?{query}" if query else "")

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> MemoryLockManager:
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            raise ConfigurationError(f"memory URL {url!r} has a path; use memory:// or memory://NAME")
        return cls(unquote(parts.netloc), **_common_options(options))

    # ------------------------------------------------------------------ internals (store mutex held)

    def _lease(self, key: str, hold: _Hold, now: float) -> Lease:
        expires = None if hold.deadline == _INF else time.time() + (hold.deadline - now)
        return Lease(key, hold.holder, hold.token, expires, hold.ttl)

    def _vacate(self, store: _Store, key: str, now: float) -> _Hold | None:
        """End the hold on ``key``: hand it to the longest waiter, or free it."""
        queue = store.queues.get(key)
        while queue:
            waiter = queue.popleft()
            holder, ttl, _ = waiter.data
            hold = _Hold(holder, next(store.tokens), now + ttl if ttl is not None else _INF, ttl, time.time())
            store.holds[key] = hold
            waiter.data = (holder, ttl, _GRANTED)
            if not queue:
                del store.queues[key]
            waiter.wake()
            return hold
        store.holds.pop(key, None)
        store.queues.pop(key, None)
        watchers = store.watchers.pop(key, None)
        if watchers:
            for waiter in watchers:
                waiter.wake()
        return None

    def _current(self, store: _Store, key: str, now: float) -> _Hold | None:
        hold = store.holds.get(key)
        if hold is not None and hold.deadline <= now:
            hold = self._vacate(store, key, now)
        return hold

    # ------------------------------------------------------------------ primitives

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        store = self._store
        with store.mutex:
            now = store.clock()
            hold = store.holds.get(key)
            if hold is not None and hold.deadline <= now:
                hold = self._vacate(store, key, now)
            if hold is None:
                hold = _Hold(holder, next(store.tokens), now + ttl if ttl is not None else _INF, ttl, time.time())
                store.holds[key] = hold
                return Lease(key, holder, hold.token, None if ttl is None else time.time() + ttl, ttl)
            if hold.holder == holder:
                hold.deadline = now + ttl if ttl is not None else _INF
                hold.ttl = ttl
                if waiter is not None and waiter.data is not None:
                    # Handed over while we slept, or the holder got it another way: either
                    # way this waiter must leave the queue.
                    if waiter.data[2] == _QUEUED:
                        store.queues[key].remove(waiter)
                        if not store.queues[key]:
                            del store.queues[key]
                    waiter.data = None
                return self._lease(key, hold, now)
            if waiter is not None and waiter.data is None:
                waiter.data = (holder, ttl, _QUEUED)
                store.queues.setdefault(key, deque()).append(waiter)
            return Busy(hold.holder, hold.deadline - now)

    def _release(self, key: str, holder: str) -> str | None:
        store = self._store
        with store.mutex:
            hold = store.holds.get(key)
            if hold is None:
                return None
            now = store.clock()
            if hold.deadline <= now:
                self._vacate(store, key, now)
                return None
            if hold.holder != holder:
                return hold.holder
            self._vacate(store, key, now)
            return None

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        store = self._store
        with store.mutex:
            now = store.clock()
            hold = self._current(store, key, now)
            if hold is None or hold.holder != holder or hold.token != token:
                return None
            hold.deadline = now + ttl if ttl is not None else _INF
            hold.ttl = ttl
            return self._lease(key, hold, now)

    def _holder(self, key: str) -> str | None:
        # Lock-free read: a dict lookup is atomic, and an expired hold reads as free.
        hold = self._store.holds.get(key)
        if hold is None or hold.deadline <= self._store.clock():
            return None
        return hold.holder

    def _info(self, store: _Store, key: str, hold: _Hold, now: float) -> LockInfo:
        expires = None if hold.deadline == _INF else time.time() + (hold.deadline - now)
        queue = store.queues.get(key)
        return LockInfo(key, hold.holder, hold.token, hold.acquired_at, expires, len(queue) if queue else 0)

    def _inspect(self, key: str) -> LockInfo | None:
        store = self._store
        with store.mutex:
            now = store.clock()
            hold = self._current(store, key, now)
            return None if hold is None else self._info(store, key, hold, now)

    def _list(self, prefix: str | None) -> list[LockInfo]:
        store = self._store
        with store.mutex:
            now = store.clock()
            return [
                self._info(store, key, hold, now)
                for key, hold in sorted(store.holds.items())
                if hold.deadline > now and (prefix is None or key.startswith(prefix))
            ]

    def _force_release(self, key: str) -> bool:
        store = self._store
        with store.mutex:
            now = store.clock()
            if self._current(store, key, now) is None:
                return False
            self._vacate(store, key, now)
            return True

    def _watch(self, key: str, waiter: Waiter | None) -> Busy | None:
        store = self._store
        with store.mutex:
            now = store.clock()
            hold = self._current(store, key, now)
            if hold is None:
                return None
            if waiter is not None and waiter.data is None:
                waiter.data = (None, None, _QUEUED)
                store.watchers.setdefault(key, []).append(waiter)
            return Busy(hold.holder, hold.deadline - now)

    def _withdraw(self, key: str, waiter: Waiter) -> Lease | None:
        store = self._store
        with store.mutex:
            data = waiter.data
            waiter.data = None
            if data is None:
                return None
            holder, _, state = data
            if state == _GRANTED:
                hold = store.holds.get(key)
                if hold is not None and hold.holder == holder:
                    return self._lease(key, hold, store.clock())
                return None
            if holder is None:
                watchers = store.watchers.get(key)
                if watchers and waiter in watchers:
                    watchers.remove(waiter)
                    if not watchers:
                        del store.watchers[key]
                return None
            queue = store.queues.get(key)
            if queue and waiter in queue:
                queue.remove(waiter)
                if not queue:
                    del store.queues[key]
            return None

    def _set_clock(self, clock: Callable[[], float]) -> None:
        """Drive this store's expiry from ``clock`` (tests only)."""
        self._store.clock = clock


def _common_options(options: Mapping[str, str]) -> dict[str, Any]:
    from txlock._url import common_options

    return common_options(options, allowed=())
