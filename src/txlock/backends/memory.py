"""The in-process backend: one lock-protected table per named store."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias
from urllib.parse import unquote, urlsplit

from txlock._errors import ConfigurationError
from txlock._flows import Request
from txlock._manager import BaseLockManager
from txlock._options import common_options
from txlock._per_process import PerProcess
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._waiter import Waiter

__all__ = ["MemoryLockManager"]

_QUEUED, _GRANTED = 1, 2

# A hold is a plain tuple (the cheapest object CPython builds):
#   (holder, token, deadline on the store's clock or inf, ttl, acquired at on the store's clock)
_Hold: TypeAlias = tuple[str, int, float, float | None, float]
_HOLDER: Final = 0
_TOKEN: Final = 1
_DEADLINE: Final = 2
_TTL: Final = 3
_ACQUIRED: Final = 4
_new_lease = tuple.__new__  # Lease(...) without NamedTuple's Python-level __new__


class _Store:
    """The table shared by every manager (and copy) that names this store."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mutex = threading.Lock()
        self.holds: dict[str, _Hold] = {}
        self.queues: dict[str, deque[Waiter]] = {}
        self.watchers: dict[str, list[Waiter]] = {}
        self.tokens = itertools.count(1)
        # The store's notion of "now" for expiry (monotonic; injected by tests), and the
        # fixed offset that turns its readings into wall-clock times for people.
        self.clock: Callable[[], float] = time.monotonic
        self.offset = time.time() - time.monotonic()

    def reset_after_fork(self) -> bool:
        """In a child made by fork: keep the holds, drop the waiters (their threads and
        loops do not exist there)."""
        self.mutex = threading.Lock()
        self.queues.clear()
        self.watchers.clear()
        return True


#: The stores of this process, by name.
_stores: PerProcess[str, _Store] = PerProcess(after_fork=_Store.reset_after_fork)

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
    _bounds_calls = False  # nothing it does can stall

    def __init__(self, name: str = "", **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.name = name
        self._store = _stores.get(name, lambda: _Store(name))

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
        return cls(unquote(parts.netloc), **common_options(options, allowed=()))

    # ------------------------------------------------------------------ internals (store mutex held)

    def _lease(self, key: str, hold: _Hold, now: float) -> Lease:
        deadline = hold[_DEADLINE]
        expires = None if deadline == _INF else self._store.offset + deadline
        return _new_lease(Lease, (key, hold[_HOLDER], hold[_TOKEN], expires, hold[_TTL]))

    def _vacate(self, store: _Store, key: str, now: float) -> _Hold | None:
        """End the hold on ``key``: hand it to the longest waiter, or free it."""
        queue = store.queues.get(key)
        if queue:
            waiter = queue.popleft()
            if not queue:
                del store.queues[key]
            holder, ttl, _, _ = waiter.data
            hold = (holder, next(store.tokens), _INF if ttl is None else now + ttl, ttl, now)
            store.holds[key] = hold
            # The hand-off is the grant: the waiter returns it even if the hold is gone by
            # the time it runs (released by someone using the same holder name).
            waiter.data = (holder, ttl, _GRANTED, None)
            waiter.lease = self._lease(key, hold, now)
            waiter.wake()
            return hold
        del store.holds[key]
        if store.watchers:
            watchers = store.watchers.pop(key, None)
            if watchers:
                for waiter in watchers:
                    waiter.wake()
        return None

    def _current(self, store: _Store, key: str, now: float) -> _Hold | None:
        hold = store.holds.get(key)
        if hold is not None and hold[_DEADLINE] <= now:
            hold = self._vacate(store, key, now)
        return hold

    def _dequeue(self, store: _Store, key: str, waiter: Waiter) -> Lease | None:
        data = waiter.data
        waiter.data = None
        if data is None:
            return None
        holder, _, state, _ = data
        if state == _GRANTED:
            return waiter.lease
        registry: Any = store.watchers if holder is None else store.queues
        entries = registry.get(key)
        if entries and waiter in entries:
            entries.remove(waiter)
            if not entries:
                del registry[key]
        return None

    # ------------------------------------------------------------------ primitives
    # The table lives in this process: each primitive does its work under the store's
    # mutex when called and returns an answered request, ``(answer, None)``: no transport.


    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Request[Lease | Busy]:
        store = self._store
        with store.mutex:
            now = store.clock()
            if waiter is not None and waiter.lease is not None:
                waiter.data = None
                return waiter.lease, None
            hold = store.holds.get(key)
            if hold is not None and hold[_DEADLINE] <= now:
                hold = self._vacate(store, key, now)
            if hold is None:
                token = next(store.tokens)
                if ttl is None:
                    store.holds[key] = (holder, token, _INF, None, now)
                    return _new_lease(Lease, (key, holder, token, None, None)), None
                store.holds[key] = (holder, token, now + ttl, ttl, now)
                return _new_lease(Lease, (key, holder, token, store.offset + now + ttl, ttl)), None
            if hold[_HOLDER] == holder:
                # Idempotent re-acquire: same grant, expiry set to what this call asks for.
                hold = (holder, hold[_TOKEN], _INF if ttl is None else now + ttl, ttl, hold[_ACQUIRED])
                store.holds[key] = hold
                if waiter is not None and waiter.data is not None:
                    self._dequeue(store, key, waiter)  # got it another way while queued
                return self._lease(key, hold, now), None
            if waiter is not None and waiter.data is None:
                waiter.data = (holder, ttl, _QUEUED, None)
                queue = store.queues.get(key)
                if queue is None:
                    queue = store.queues[key] = deque()
                queue.append(waiter)
            return Busy(hold[_HOLDER], hold[_DEADLINE] - now), None

    def _release(self, key: str, holder: str) -> Request[str | None]:
        store = self._store
        with store.mutex:
            hold = store.holds.get(key)
            if hold is None:
                return None, None
            deadline = hold[_DEADLINE]
            if deadline != _INF:
                now = store.clock()
                if deadline <= now:
                    self._vacate(store, key, now)  # expired: release is a no-op
                    return None, None
            if hold[_HOLDER] != holder:
                return hold[_HOLDER], None
            if key in store.queues:
                self._vacate(store, key, store.clock())
                return None, None
            del store.holds[key]
            if store.watchers:
                self._wake_watchers(store, key)
            return None, None

    def _wake_watchers(self, store: _Store, key: str) -> None:
        watchers = store.watchers.pop(key, None)
        if watchers:
            for waiter in watchers:
                waiter.wake()

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Request[Lease | None]:
        store = self._store
        with store.mutex:
            now = store.clock()
            hold = self._current(store, key, now)
            if hold is None or hold[_HOLDER] != holder or hold[_TOKEN] != token:
                return None, None
            hold = (holder, token, _INF if ttl is None else now + ttl, ttl, hold[_ACQUIRED])
            store.holds[key] = hold
            return self._lease(key, hold, now), None

    def _holder(self, key: str) -> Request[str | None]:
        # Lock-free read: a dict lookup is atomic, and an expired hold reads as free.
        hold = self._store.holds.get(key)
        if hold is None or (hold[_DEADLINE] != _INF and hold[_DEADLINE] <= self._store.clock()):
            return None, None
        return hold[_HOLDER], None

    def _info(self, store: _Store, key: str, hold: _Hold, now: float) -> LockInfo:
        deadline = hold[_DEADLINE]
        queue = store.queues.get(key)
        return LockInfo(
            key,
            hold[_HOLDER],
            hold[_TOKEN],
            store.offset + hold[_ACQUIRED],
            None if deadline == _INF else store.offset + deadline,
            len(queue) if queue else 0,
        )

    def _inspect(self, key: str) -> Request[LockInfo | None]:
        store = self._store
        with store.mutex:
            now = store.clock()
            hold = self._current(store, key, now)
            return None if hold is None else self._info(store, key, hold, now), None

    def _list(self, prefix: str | None) -> Request[list[LockInfo]]:
        store = self._store
        with store.mutex:
            now = store.clock()
            infos = [
                self._info(store, key, hold, now)
                for key, hold in sorted(store.holds.items())
                if hold[_DEADLINE] > now and (prefix is None or key.startswith(prefix))
            ]
            return infos, None

    def _force_release(self, key: str) -> Request[bool]:
        store = self._store
        with store.mutex:
            now = store.clock()
            if self._current(store, key, now) is None:
                return False, None
            self._vacate(store, key, now)
            return True, None

    def _watch(self, key: str, waiter: Waiter | None) -> Request[Busy | None]:
        store = self._store
        with store.mutex:
            now = store.clock()
            hold = self._current(store, key, now)
            if hold is None:
                return None, None
            if waiter is not None and waiter.data is None:
                waiter.data = (None, None, _QUEUED, None)
                store.watchers.setdefault(key, []).append(waiter)
            return Busy(hold[_HOLDER], hold[_DEADLINE] - now), None

    def _withdraw(self, key: str, waiter: Waiter) -> Request[Lease | None]:
        store = self._store
        with store.mutex:
            return self._dequeue(store, key, waiter), None

    def _set_clock(self, clock: Callable[[], float]) -> None:
        """Drive this store's expiry from ``clock`` (tests only)."""
        self._store.offset = time.time() - clock()
        self._store.clock = clock
