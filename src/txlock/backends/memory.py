"""The in-process backend: one lock-protected table per named store."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from txlock._manager import BaseLockManager
from txlock._observe import process_observers as _process_observers
from txlock._per_process import PerProcess
from txlock._types import Busy, Capabilities, Lease, LockInfo

if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec, TypeVar

    from txlock._flows import Request
    from txlock._waiter import Waiter

    P = ParamSpec("P")
    R = TypeVar("R")

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
_new = tuple.__new__  # Lease(...), Busy(...) without NamedTuple's Python-level __new__


class _Store:
    """The table shared by every manager (and copy) that names this store, and its mutex.

    The mutex is a plain ``threading.Lock``; the fast paths take and give it inline::

        mutex = store.mutex
        mutex.acquire()
        try:
            ...  # the table is this thread's
        finally:
            mutex.release()
    """

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
        self.mutex = threading.Lock()  # another thread may have held it at fork time
        self.queues.clear()
        self.watchers.clear()
        return True


def _under_mutex(
    primitive: Callable[Concatenate[MemoryLockManager, _Store, P], R],
) -> Callable[Concatenate[MemoryLockManager, P], R]:
    """The primitive, run holding its store's mutex (taken and given back as the class
    _Store shows), with the store passed in."""

    def locked(self: MemoryLockManager, /, *args: P.args, **kwargs: P.kwargs) -> R:
        store = self._store
        mutex = store.mutex
        mutex.acquire()
        try:
            return primitive(self, store, *args, **kwargs)
        finally:
            mutex.release()

    locked.__name__, locked.__qualname__, locked.__doc__ = primitive.__name__, primitive.__qualname__, primitive.__doc__
    return locked


#: The stores of this process, by name.
_stores: PerProcess[str, _Store] = PerProcess(after_fork=_Store.reset_after_fork)

_INF = float("inf")
#: What the protocol's fast paths do in place of calling them (see ``__init_subclass__``).
_BYPASSED = ("_try_acquire", "_release", "_exec", "_aexec")
#: The largest ``int`` hold timeout the fast path converts itself (exactly representable).
_MAX_INT_TTL = 2**53


def _plain_wait(seconds: object) -> bool:
    """Whether an acquire timeout is valid and needs no more than ``float()``: a ``float``
    or an ``int`` (not ``bool``) >= 0. Anything else takes the general path."""
    return (type(seconds) is float or type(seconds) is int) and seconds >= 0


def _plain_int_ttl(seconds: object) -> float | None:
    """An ``int`` hold timeout > 0 as the ``float`` the general path makes of it, or
    ``None`` for anything else (the general path checks it and says what is wrong)."""
    if type(seconds) is int and 0 < seconds <= _MAX_INT_TTL:
        return float(seconds)
    return None


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The fast paths below do the work of _try_acquire and _release themselves. A
        # subclass that changes those primitives or the transport (a test double, an
        # instrumented store) gets the general protocol methods, which go through them.
        if cls._async_io or any(getattr(cls, name) is not getattr(MemoryLockManager, name) for name in _BYPASSED):
            for name in ("acquire_lock", "aacquire_lock", "release_lock", "arelease_lock"):
                if name not in cls.__dict__:
                    setattr(cls, name, getattr(BaseLockManager, name))

    def __init__(self, name: str = "", **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.name = name
        self._store = _stores.get(name, lambda: _Store(name))
        # The fast path's length test, as an instance attribute (the cheapest read there
        # is): a key and a holder whose lengths add up to at most the smaller limit are
        # both within theirs. Longer ones take the general path, which checks each.
        self._name_limit = min(self.max_key_length, self.max_holder_length)

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        return (self.name,)

    def _init_kwargs(self) -> dict[str, Any]:
        return {"name": self.name, **self._common_kwargs()}

    def _url(self, *, redact: bool) -> str:
        from urllib.parse import quote, urlencode  # here: URLs cost start-up time to everyone

        query = urlencode(self._common_query())
        return f"memory://{quote(self.name, safe='')}" + (f"?{query}" if query else "")

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> MemoryLockManager:
        from urllib.parse import unquote, urlsplit

        from txlock._errors import ConfigurationError
        from txlock._options import common_options

        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            raise ConfigurationError(f"memory URL {url!r} has a path; use memory:// or memory://NAME")
        return cls(unquote(parts.netloc), **common_options(options, allowed=()))

    # ------------------------------------------------------------------ Prefect's protocol, fast
    # Prefect calls acquire_lock and release_lock around every transaction. Their common
    # case (plain arguments, nobody observing; a free key to take, or one's own hold to
    # end) runs here in one frame each, under the store's mutex taken inline (see
    # _Store); anything else goes to the general path of the base class and the
    # primitives below. The grant is the free-key branch of ``_try_acquire`` and the
    # release the one of ``_release``, written out: a call and a Lease would cost more
    # than the rest of the work. aacquire_lock and arelease_lock go through these two.

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """Acquire ``key`` for ``holder``; ``True`` once held, ``False`` on timeout (see
        :meth:`BaseLockManager.acquire_lock <txlock.BaseLockManager.acquire_lock>`)."""
        if (
            type(key) is not str or type(holder) is not str
            or len(key) + len(holder) > self._name_limit  # both within the limits
            or self._observers or _process_observers
            or not (
                acquire_timeout is None
                or (type(acquire_timeout) is float and acquire_timeout >= 0.0)  # aacquire_lock's 0.0
                or _plain_wait(acquire_timeout)
            )
        ):
            return BaseLockManager.acquire_lock(self, key, holder, acquire_timeout, hold_timeout)
        ttl = hold_timeout
        if ttl is not None and not (type(ttl) is float and 0.0 < ttl < _INF):
            ttl = _plain_int_ttl(ttl)
            if ttl is None:  # not a plain hold timeout: the general path explains why
                return BaseLockManager.acquire_lock(self, key, holder, acquire_timeout, hold_timeout)
        store = self._store
        holds = store.holds
        mutex = store.mutex
        mutex.acquire()
        try:
            if key not in holds:
                clock = store.clock  # then call: cheaper than a method-style call of an attribute
                now = clock()
                if ttl is None:
                    holds[key] = (holder, next(store.tokens), _INF, None, now)
                else:
                    holds[key] = (holder, next(store.tokens), now + ttl, ttl, now)
                return True
            # Held. By another holder for as long as it lives: that is the first attempt's
            # answer, and the waiting path goes on from it (a timed hold, or one of this
            # holder, needs the general attempt: expiry, re-grant).
            hold = holds[key]
            busy = _new(Busy, (hold[0], _INF)) if hold[2] == _INF and hold[0] != holder else None
        finally:
            mutex.release()
        wait = self._default_timeout if acquire_timeout is None else float(acquire_timeout)
        return self._acquire_checked(key, holder, wait, ttl, busy) is not None

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``key`` held by ``holder``; the longest waiter proceeds (see
        :meth:`BaseLockManager.release_lock <txlock.BaseLockManager.release_lock>`)."""
        if type(key) is not str or type(holder) is not str or self._observers or _process_observers:
            return BaseLockManager.release_lock(self, key, holder)
        store = self._store
        holds = store.holds
        mutex = store.mutex
        mutex.acquire()
        try:
            hold = holds.get(key)
            # A key and holder that match a hold passed the length limits when it was
            # granted. (Indices as literals, _HOLDER and _DEADLINE: each global read costs.)
            if hold is not None and hold[0] == holder:
                deadline = hold[2]
                if deadline == _INF or deadline > store.clock():
                    if key in store.queues or store.watchers:
                        self._vacate(store, key, store.clock())
                    else:
                        del holds[key]
                    return None
        finally:
            mutex.release()
        # Not held, held by another holder, or expired: the general path says which.
        return BaseLockManager.release_lock(self, key, holder)

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """Async form of :meth:`acquire_lock`. Cancelling it never leaves a hold behind."""
        # The sync fast path first, with one attempt (``acquire_timeout=0``: it never waits,
        # so it cannot block the loop): a free key is taken there, a held one is waited for
        # by the async path. Only while that attempt is silent: nobody observing (no event
        # for it), no LockTimeout to raise when it finds the key held.
        if (
            (acquire_timeout is None or _plain_wait(acquire_timeout))
            and not (self._raise_on_timeout or self._observers or _process_observers)
            and self.acquire_lock(key, holder, 0.0, hold_timeout)
        ):
            return True
        # The waiting path of the base class, entered one coroutine deep (its first attempt
        # made anew: the key may have changed hands since).
        wait, ttl = self._acquire_args(key, holder, acquire_timeout, hold_timeout)
        return await self._aacquire_checked(key, holder, wait, ttl) is not None

    async def arelease_lock(self, key: str, holder: str) -> None:
        """Async form of :meth:`release_lock` (which never blocks on this store)."""
        self.release_lock(key, holder)

    # ------------------------------------------------------------------ internals (store mutex held)

    def _lease(self, key: str, hold: _Hold, now: float) -> Lease:
        deadline = hold[_DEADLINE]
        expires = None if deadline == _INF else self._store.offset + deadline
        return _new(Lease, (key, hold[_HOLDER], hold[_TOKEN], expires, hold[_TTL]))

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
            expires = None if ttl is None else store.offset + hold[_DEADLINE]
            waiter.lease = _new(Lease, (key, holder, hold[_TOKEN], expires, ttl))  # self._lease(), inlined
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
        mutex = store.mutex
        mutex.acquire()  # inline (see _Store): the waiting path calls this twice per wait
        try:
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
                    return _new(Lease, (key, holder, token, None, None)), None
                store.holds[key] = (holder, token, now + ttl, ttl, now)
                return _new(Lease, (key, holder, token, store.offset + now + ttl, ttl)), None
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
            return _new(Busy, (hold[_HOLDER], hold[_DEADLINE] - now)), None
        finally:
            mutex.release()

    @_under_mutex
    def _release(self, store: _Store, key: str, holder: str) -> Request[str | None]:
        hold = store.holds.get(key)
        if hold is None:
            return None, None
        now = store.clock()
        if hold[_DEADLINE] <= now:
            self._vacate(store, key, now)  # expired: release is a no-op
            return None, None
        if hold[_HOLDER] != holder:
            return hold[_HOLDER], None
        self._vacate(store, key, now)  # to the longest waiter, or free
        return None, None

    @_under_mutex
    def _extend(self, store: _Store, key: str, holder: str, token: int, ttl: float | None) -> Request[Lease | None]:
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

    @_under_mutex
    def _inspect(self, store: _Store, key: str) -> Request[LockInfo | None]:
        now = store.clock()
        hold = self._current(store, key, now)
        return None if hold is None else self._info(store, key, hold, now), None

    @_under_mutex
    def _list(self, store: _Store, prefix: str | None) -> Request[list[LockInfo]]:
        now = store.clock()
        infos = [
            self._info(store, key, hold, now)
            for key, hold in sorted(store.holds.items())
            if hold[_DEADLINE] > now and (prefix is None or key.startswith(prefix))
        ]
        return infos, None

    @_under_mutex
    def _force_release(self, store: _Store, key: str) -> Request[bool]:
        now = store.clock()
        if self._current(store, key, now) is None:
            return False, None
        self._vacate(store, key, now)
        return True, None

    @_under_mutex
    def _watch(self, store: _Store, key: str, waiter: Waiter | None) -> Request[Busy | None]:
        now = store.clock()
        hold = self._current(store, key, now)
        if hold is None:
            return None, None
        if waiter is not None and waiter.data is None:
            waiter.data = (None, None, _QUEUED, None)
            store.watchers.setdefault(key, []).append(waiter)
        return Busy(hold[_HOLDER], hold[_DEADLINE] - now), None

    @_under_mutex
    def _withdraw(self, store: _Store, key: str, waiter: Waiter) -> Request[Lease | None]:
        return self._dequeue(store, key, waiter), None

    def _set_clock(self, clock: Callable[[], float]) -> None:
        """Drive this store's expiry from ``clock`` (tests only)."""
        self._store.offset = time.time() - clock()
        self._store.clock = clock
