"""The public base class every manager derives from.

A backend implements a handful of *single-attempt, non-blocking primitives* (the methods
starting with ``_`` in the "primitives" section below). Each returns a
:data:`~txlock._flows.Request`, the work for the store and the function that reads its
reply, which the backend's one sync transport (``_exec``) or one async transport
(``_aexec``) executes. Everything else (validation, deadlines, the waiting loop in
:mod:`txlock._flows`, cancellation, ``lock()`` blocks and their renewal in
:mod:`txlock._context`) lives above the backends, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from txlock._deadline import DeadlineScope, deadline_scope
from txlock._errors import BackendError, LockLost, LockTimeout, NotLockHolder, NotSent
from txlock._flows import NOTHING, Request, acquire_flow, arun_flow, run_flow, wait_flow
from txlock._observe import Emitter, ObservedAcquire, ObserverLike, observing
from txlock._observe import process_observers as _process_observers
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import check_hold_timeout, check_holder, check_key, check_timeout
from txlock._waiter import Waiter

if TYPE_CHECKING:  # imported where used: most processes never make a lock() block
    from txlock._context import LockContext
    from txlock._multi import MultiLockContext

__all__ = ["BaseLockManager"]

T = TypeVar("T")
R = TypeVar("R")


def _check_lease(lease: object) -> None:
    if not isinstance(lease, Lease):
        hint = " (acquire_lease returns None when it times out: check for it first)" if lease is None else ""
        raise TypeError(f"renew() needs the Lease that acquire_lease returned, not {type(lease).__name__}{hint}")


#: The scope of a call without a deadline to carry (reusable: it does nothing).
_NO_DEADLINE = contextlib.nullcontext()


def _holder_of(info: LockInfo | None) -> str | None:
    return None if info is None else info.holder


def _busy_if_held(holder: str | None) -> Busy | None:
    return None if holder is None else Busy(holder, 0.001)


class BaseLockManager:
    """The interface shared by every txlock manager.

    It implements Prefect's ``LockManager`` protocol (``acquire_lock``, ``release_lock``,
    ``is_locked``, ``is_lock_holder``, ``wait_for_lock`` and their async forms) and a richer
    API: leases with fencing tokens, ``lock()`` / ``alock()`` context managers with background
    renewal, ``inspect``, ``list_locks`` and ``force_release``.

    One instance may be shared by every thread and task of a process. Copies (``copy``,
    ``pickle``) talk to the same store. Two managers with equal configuration compare equal.

    Args:
        acquire_timeout: the wait used when a call passes ``acquire_timeout=None`` (Prefect
            always does). ``None`` (the default) waits forever.
        raise_on_timeout: when ``True``, an ``acquire_lock`` / ``aacquire_lock`` that times
            out raises :class:`~txlock.LockTimeout` instead of returning ``False``. Prefect
            ignores the boolean result of ``acquire_lock``, so with Prefect this is the only
            way to bound a wait without running the transaction unlocked.
    """

    #: URL scheme(s) served by the class, the first being canonical.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: What the backend can do.
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Longest key accepted, in characters. A longer key raises ``ValueError`` before any
    #: I/O. The same on every backend except PostgreSQL (4096), so code moves between them.
    max_key_length: ClassVar[int] = 65536
    #: Longest holder accepted, in characters (``ValueError`` before any I/O).
    max_holder_length: ClassVar[int] = 65536
    #: ``True`` when the backend's calls read ``call_budget()`` (network stores, SQLite's
    #: async retries): acquires with a timeout then carry their deadline down to them.
    _bounds_calls: ClassVar[bool] = True
    #: ``True`` when ``_aexec`` performs real network I/O (then a request in flight is
    #: shielded from cancellation, so the outcome of a grant is always known).
    _async_io: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Async acquires may make their first attempt with the sync transport when the
        # backend's async transport is just that (local media).
        cls._local_attempts = not cls._async_io and cls._aexec is BaseLockManager._aexec

    _local_attempts: ClassVar[bool] = False
    _observers: tuple[ObserverLike, ...] = ()

    def __init__(self, *, acquire_timeout: float | None = None, raise_on_timeout: bool = False) -> None:
        self._default_timeout = check_timeout(acquire_timeout, "acquire_timeout")
        if not isinstance(raise_on_timeout, bool):
            raise TypeError(f"raise_on_timeout must be a bool, not {type(raise_on_timeout).__name__}")
        self._raise_on_timeout = raise_on_timeout
        self._emitter = Emitter(self.schemes[0] if self.schemes else type(self).__name__)
        self._observers = ()  # this manager's own (the emitter's, mirrored for the hot paths' test)

    def _check_names(self, key: object, holder: object) -> None:
        """Raise the error for a bad key or holder. The acquire and release paths call it
        only when their inline test (two ``str`` within the limits) fails."""
        self._valid_key(key)
        self._valid_holder(holder)

    def _deadline(self, seconds: float | None) -> DeadlineScope | None:
        """The scope that carries a call's deadline down to the store's calls (read there
        through ``call_budget``), or ``None`` when there is none to carry: no timeout, a
        store that cannot stall, or a deadline already set by the call around this one."""
        return deadline_scope(seconds) if self._bounds_calls else None

    def _valid_key(self, key: object) -> str:
        return check_key(key, self.max_key_length, type(self).__name__)

    def _valid_holder(self, holder: object) -> str:
        return check_holder(holder, self.max_holder_length, type(self).__name__)

    def _parked_here(self, key: str) -> int | None:
        """How many calls of this process wait on ``key`` right now, or ``None`` if the
        backend cannot tell (then ``LockInfo.waiters`` counts them). For tests: it lets
        them wait on observable state instead of sleeping."""
        return None

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        """Hashable configuration (may contain secrets: never shown)."""
        raise NotImplementedError

    def _init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild an equivalent manager in any process."""
        raise NotImplementedError

    def _common_kwargs(self) -> dict[str, Any]:
        return {"acquire_timeout": self._default_timeout, "raise_on_timeout": self._raise_on_timeout}

    def _common_query(self) -> dict[str, str]:
        query: dict[str, str] = {}
        if self._default_timeout is not None:
            query["acquire_timeout"] = f"{self._default_timeout:g}"
        if self._raise_on_timeout:
            query["raise_on_timeout"] = "true"
        return query

    @property
    def url(self) -> str:
        """A URL that rebuilds this manager with :func:`txlock.from_url`, password redacted."""
        return self._url(redact=True)

    def _url(self, *, redact: bool) -> str:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, BaseLockManager)
        return self._config() == other._config() and self._common_query() == other._common_query()

    def __hash__(self) -> int:
        return hash((type(self), self._config(), tuple(self._common_query().items())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._init_kwargs()))

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> BaseLockManager:
        """Build a manager from a URL of one of ``schemes``; see :func:`txlock.from_url`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release client resources (connections, descriptors). Holds are not released."""

    async def aclose(self) -> None:
        """Async form of :meth:`close`."""
        self.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ transport
    # One sync and one async method per backend. Stores whose primitives answer at once
    # (requests with no ``read``: the memory table, lock files) never need them.

    def _exec(self, work: Any) -> Any:
        """Execute a request's work on the store and return the store's reply."""
        raise NotImplementedError(f"{type(self).__name__} answers every request without a transport")

    async def _aexec(self, work: Any) -> Any:
        """Async form of :meth:`_exec`; by default the sync one (local media that never block long)."""
        return self._exec(work)

    def _call(self, request: Request[R], key: str = "") -> R:
        """Run one primitive's request with the sync transport (``key``: for the observers)."""
        work, read = request
        if read is None:
            return work  # type: ignore[no-any-return]
        try:
            return read(self._exec(work))
        except BackendError as exc:
            self._backend_error(exc, key)
            raise

    async def _acall(self, request: Request[R], key: str = "") -> R:
        """Run one primitive's request with the async transport (``key``: for the observers)."""
        work, read = request
        if read is None:
            return work  # type: ignore[no-any-return]
        try:
            return read(await self._aexec(work))
        except BackendError as exc:
            self._backend_error(exc, key)
            raise

    # ------------------------------------------------------------------ primitives
    # Each returns a request; none blocks beyond one round trip to the store.

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Request[Lease | Busy]:
        """One attempt. Grant (or re-grant to the same holder, resetting the expiry to
        ``ttl``) and answer the lease, or answer ``Busy``. With a ``waiter``, register it
        so that a later release wakes it; registering twice keeps its place."""
        raise NotImplementedError

    def _release(self, key: str, holder: str) -> Request[str | None]:
        """Free the key if ``holder`` holds it. Answer ``None`` when released or not held
        at all, or the name of the other holder that holds it (nothing changes then)."""
        raise NotImplementedError

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Request[Lease | None]:
        """Renew the grant ``token`` of ``holder`` to end ``ttl`` seconds from now (or bind it
        to this process when ``None``); ``None`` if that grant no longer holds the key."""
        raise NotImplementedError

    def _inspect(self, key: str) -> Request[LockInfo | None]:
        """Describe the current hold on the key; ``None`` when free or expired."""
        raise NotImplementedError

    def _list(self, prefix: str | None) -> Request[list[LockInfo]]:
        """Every live hold whose key starts with ``prefix``, sorted by key."""
        raise NotImplementedError

    def _force_release(self, key: str) -> Request[bool]:
        """Free the key whoever holds it; ``True`` if it was held."""
        raise NotImplementedError

    def _holder(self, key: str) -> Request[str | None]:
        """The current holder of the key, or ``None`` when free or expired."""
        work, read = self._inspect(key)
        if read is None:
            return _holder_of(work), None
        return work, lambda reply: _holder_of(read(reply))

    def _watch(self, key: str, waiter: Waiter | None) -> Request[Busy | None]:
        """``None`` when the key is free; else ``Busy``, with ``waiter`` registered to be
        woken when the key is freed."""
        work, read = self._holder(key)
        if read is None:
            return _busy_if_held(work), None
        return work, lambda reply: _busy_if_held(read(reply))

    def _withdraw(self, key: str, waiter: Waiter) -> Request[Lease | None]:
        """Forget a waiter. If the backend had already handed it the lock, answer that lease."""
        return NOTHING

    # ------------------------------------------------------------------ Prefect's protocol

    def _timed_out(self, key: str, timeout: float | None) -> bool:
        if self._raise_on_timeout:
            raise LockTimeout(key, timeout)
        return False

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """Acquire ``key`` for ``holder``; ``True`` once held, ``False`` on timeout.

        Re-acquiring a lock the holder already holds returns ``True`` at once and sets the
        hold's expiry to what this call asks for. ``acquire_timeout=None`` waits forever
        (or the manager's default), ``0`` makes exactly one attempt. ``hold_timeout=None``
        holds until released or until this process dies; ``T`` ends the hold T seconds
        after the grant.
        """
        return self.acquire_lease(key, holder, acquire_timeout, hold_timeout) is not None

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """Async form of :meth:`acquire_lock`. Cancelling it never leaves a hold behind."""
        wait, ttl = self._acquire_args(key, holder, acquire_timeout, hold_timeout)
        first = self._local_attempt(key, holder, ttl)
        if type(first) is Lease:
            return True
        return await self._aacquire_checked(key, holder, wait, ttl, first) is not None

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``key`` held by ``holder``; the longest waiter proceeds.

        A key that is not held (free or expired) is a no-op. A key held by another holder
        raises :class:`~txlock.NotLockHolder` (a ``ValueError``) with Prefect's message.
        """
        if (
            type(key) is not str or type(holder) is not str
            or len(key) > self.max_key_length or len(holder) > self.max_holder_length
        ):  # inline: the hot path pays no call
            self._check_names(key, holder)
        if self._observers or _process_observers:
            other = self._call(self._release(key, holder), key)
        else:
            work, read = self._release(key, holder)
            other = work if read is None else read(self._exec(work))
        self._released(key, holder, other)

    async def arelease_lock(self, key: str, holder: str) -> None:
        """Async form of :meth:`release_lock`."""
        self._check_key_and_holder(key, holder)
        self._released(key, holder, await self._acall(self._release(key, holder), key))

    def _block_released(self, key: str, holder: str, other: str | None) -> None:
        """A ``lock()`` block released the store: tell the observers what it found."""
        if self._observers or _process_observers:
            if other is None:
                self._emitter.released(key, holder)
            else:
                self._emitter.simple("lost", key, holder)

    def _released(self, key: str, holder: str, other: str | None) -> None:
        if other is not None:
            raise NotLockHolder(key, holder, other)
        if self._observers or _process_observers:
            self._emitter.released(key, holder)

    def _check_key_and_holder(self, key: object, holder: object) -> None:
        if (
            type(key) is not str or type(holder) is not str
            or len(key) > self.max_key_length or len(holder) > self.max_holder_length
        ):  # the common case pays two type tests and two length tests, no further call
            self._check_names(key, holder)

    def is_locked(self, key: str) -> bool:
        """Whether ``key`` is held right now (by anyone), read from the shared store."""
        work, read = self._holder(self._valid_key(key))  # _call inlined: Prefect asks before every write
        if read is None:
            return work is not None
        try:
            return read(self._exec(work)) is not None
        except BackendError as exc:
            self._backend_error(exc, key)
            raise

    async def ais_locked(self, key: str) -> bool:
        """Async form of :meth:`is_locked`."""
        return await self._acall(self._holder(self._valid_key(key)), key) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether ``holder`` holds ``key`` right now, read from the shared store."""
        self._valid_holder(holder)
        return self._call(self._holder(self._valid_key(key)), key) == holder

    async def ais_lock_holder(self, key: str, holder: str) -> bool:
        """Async form of :meth:`is_lock_holder`."""
        self._valid_holder(holder)
        return await self._acall(self._holder(self._valid_key(key)), key) == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is free without taking it: ``True`` when free, ``False`` on
        timeout. ``timeout=0`` checks once; ``None`` waits forever."""
        seconds = self._wait_args(key, timeout)
        try:
            with self._deadline(seconds) or _NO_DEADLINE:
                return run_flow(self, wait_flow(self, key, seconds))
        except BackendError as exc:
            self._backend_error(exc, key)
            raise

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async form of :meth:`wait_for_lock`."""
        seconds = self._wait_args(key, timeout)
        try:
            with self._deadline(seconds) or _NO_DEADLINE:
                return await arun_flow(self, wait_flow(self, key, seconds))
        except BackendError as exc:
            self._backend_error(exc, key)
            raise

    def _wait_args(self, key: str, timeout: object) -> float | None:
        self._valid_key(key)
        return check_timeout(timeout, "timeout")

    # ------------------------------------------------------------------ the rich API

    def acquire_lease(
        self, key: str, holder: str, timeout: float | None = None, ttl: float | None = None
    ) -> Lease | None:
        """Like :meth:`acquire_lock`, but return the :class:`~txlock.Lease` (with its fencing
        token) or ``None`` on timeout."""
        wait, ttl = self._acquire_args(key, holder, timeout, ttl)
        return self._acquire_checked(key, holder, wait, ttl)

    def _acquire_checked(
        self, key: str, holder: str, wait: float | None, ttl: float | None, busy: Busy | None = None
    ) -> Lease | None:
        """:meth:`acquire_lease` once its arguments are checked (``wait`` with the default
        timeout applied). ``busy``: the answer of an unobserved first attempt that a
        backend's fast path already made and found the key held (``None``: none made)."""
        if (self._observers or _process_observers) and observing.get() is None:
            return self._observed_acquire(key, holder, wait, ttl)
        scope = deadline_scope(wait) if self._bounds_calls else None
        if scope is not None:
            with scope:  # the same call, now with the deadline set
                return self._acquire_checked(key, holder, wait, ttl, busy)
        first: Lease | Busy | None = busy
        if first is None:
            work, read = self._try_acquire(key, holder, ttl, None)
            try:
                first = work if read is None else read(self._exec(work))
            except NotSent:  # no connection came free before the deadline: nothing was asked
                return self._acquired(key, wait, None)
            if isinstance(first, Lease):
                return first
        return self._acquired(key, wait, run_flow(self, acquire_flow(self, key, holder, ttl, wait, first)))

    async def aacquire_lease(
        self, key: str, holder: str, timeout: float | None = None, ttl: float | None = None
    ) -> Lease | None:
        """Async form of :meth:`acquire_lease`."""
        wait, ttl = self._acquire_args(key, holder, timeout, ttl)
        first = self._local_attempt(key, holder, ttl)
        if type(first) is Lease:
            return first
        return await self._aacquire_checked(key, holder, wait, ttl, first)

    def _local_attempt(self, key: str, holder: str, ttl: float | None) -> Lease | Busy | None:
        """An async acquire's first attempt, made at once when it cannot block (a local
        medium; no deadline to carry, nobody observing), so that a grant returns without
        the coroutine of the waiting path; ``None`` when it must be left to that path."""
        if not self._local_attempts or self._bounds_calls or self._observers or _process_observers:
            return None
        work, read = self._try_acquire(key, holder, ttl, None)
        return work if read is None else read(self._exec(work))

    async def _aacquire_checked(
        self, key: str, holder: str, wait: float | None, ttl: float | None, first: Lease | Busy | None = None
    ) -> Lease | None:
        """:meth:`aacquire_lease` once its arguments are checked; ``first``: the outcome of
        an unobserved first attempt already made (``None``: none yet)."""
        if (self._observers or _process_observers) and observing.get() is None:
            return await self._aobserved_acquire(key, holder, wait, ttl)
        scope = deadline_scope(wait) if self._bounds_calls else None
        if scope is not None:
            with scope:
                return await self._aacquire_checked(key, holder, wait, ttl, first)
        if first is None and self._local_attempts:  # the attempt cannot block: no driver needed
            first = self._first_attempt(key, holder, ttl)
            if isinstance(first, Lease):
                return first
        return self._acquired(key, wait, await arun_flow(self, acquire_flow(self, key, holder, ttl, wait, first)))

    # ------------------------------------------------------------------ observers

    def add_observer(self, observer: ObserverLike) -> None:
        """Send this manager's events to ``observer`` (see :class:`txlock.Observer`); for
        every manager of the process, use :func:`txlock.add_observer`."""
        self._emitter.add(observer)
        self._observers = self._emitter.observers

    def remove_observer(self, observer: ObserverLike) -> None:
        """Stop sending this manager's events to ``observer`` (no-op if it was not added)."""
        self._emitter.remove(observer)
        self._observers = self._emitter.observers

    def _observed_acquire(self, key: str, holder: str, wait: float | None, ttl: float | None) -> Lease | None:
        with ObservedAcquire(self._emitter, key, holder) as observed:
            observed.lease = self._acquire_checked(key, holder, wait, ttl)
        return observed.lease

    async def _aobserved_acquire(
        self, key: str, holder: str, wait: float | None, ttl: float | None
    ) -> Lease | None:
        with ObservedAcquire(self._emitter, key, holder) as observed:
            observed.lease = await self._aacquire_checked(key, holder, wait, ttl)
        return observed.lease

    def _backend_error(self, exc: BackendError, key: str = "") -> None:
        if (self._observers or _process_observers) and observing.get() is None:
            self._emitter.simple("backend_error", key, error=exc)

    def _acquire_args(
        self, key: object, holder: object, timeout: object, ttl: object
    ) -> tuple[float | None, float | None]:
        """Check an acquire's arguments; its wait and hold timeouts."""
        if (
            type(key) is not str or type(holder) is not str
            or len(key) > self.max_key_length or len(holder) > self.max_holder_length
        ):  # inline: the common case pays no call
            self._check_names(key, holder)
        wait = self._default_timeout if timeout is None else check_timeout(timeout, "acquire_timeout")
        return wait, None if ttl is None else check_hold_timeout(ttl, "hold_timeout")

    def _first_attempt(self, key: str, holder: str, ttl: float | None) -> Lease | Busy:
        work, read = self._try_acquire(key, holder, ttl, None)
        return work if read is None else read(self._exec(work))

    def _acquired(self, key: str, wait: float | None, lease: Lease | None) -> Lease | None:
        if lease is None:
            self._timed_out(key, wait)
        return lease

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a grant to end ``ttl`` seconds from now (default: its own ttl).

        Raises :class:`~txlock.LockLost` when the grant no longer holds the key.
        """
        return self._renewed(lease, self._call(self._renewal(lease, ttl)))

    async def arenew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Async form of :meth:`renew`."""
        return self._renewed(lease, await self._acall(self._renewal(lease, ttl)))

    def _renewed(self, lease: Lease, new: Lease | None) -> Lease:
        if new is None:
            self._emitter.simple("lost", lease.key, lease.holder, lease.token)
            raise LockLost(lease.key, lease.holder, "it expired or was released before renewal")
        self._emitter.simple("renewed", new.key, new.holder, new.token)
        return new

    def _process_hold_valid_until(self, sent: float) -> float | None:
        """Until when (``time.monotonic()``) a hold without ``hold_timeout`` granted by a
        request sent at ``sent`` is surely valid, or ``None`` when it lasts as long as this
        process does, whatever happens to the store (memory, file, SQLite: the kernel ends
        it). Stores that keep such holds alive with a heartbeat answer the later of ``sent``
        and the last heartbeat that went through, plus their liveness window; a ``lock()``
        block reports its hold lost before that time passes."""
        return None

    def _renewal(self, lease: object, ttl: object) -> Request[Lease | None]:
        _check_lease(lease)
        assert isinstance(lease, Lease)
        seconds = check_hold_timeout(lease.ttl if ttl is None else ttl, "ttl")
        return self._extend(lease.key, lease.holder, lease.token, seconds)

    def inspect(self, key: str) -> LockInfo | None:
        """Describe the current hold on ``key``, or ``None`` when it is free."""
        return self._call(self._inspect(self._valid_key(key)), key)

    async def ainspect(self, key: str) -> LockInfo | None:
        """Async form of :meth:`inspect`."""
        return await self._acall(self._inspect(self._valid_key(key)), key)

    def list_locks(self, prefix: str | None = None) -> list[LockInfo]:
        """Every lock held now (whose key starts with ``prefix``), sorted by key."""
        if prefix is not None:
            check_key(prefix)
        return self._call(self._list(prefix))

    async def alist_locks(self, prefix: str | None = None) -> list[LockInfo]:
        """Async form of :meth:`list_locks`."""
        if prefix is not None:
            check_key(prefix)
        return await self._acall(self._list(prefix))

    def force_release(self, key: str) -> bool:
        """Free ``key`` whoever holds it (an operator's tool); ``True`` if it was held.

        The holder learns of it at its next renewal, release or ``is_lock_holder`` check.
        """
        return self._forced(key, self._call(self._force_release(self._valid_key(key)), key))

    async def aforce_release(self, key: str) -> bool:
        """Async form of :meth:`force_release`."""
        return self._forced(key, await self._acall(self._force_release(self._valid_key(key)), key))

    def _forced(self, key: str, freed: bool) -> bool:
        if freed:
            self._emitter.simple("force_released", key)
        return freed

    def lock(
        self,
        key: str,
        holder: str | None = None,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> LockContext:
        """A context manager holding ``key`` for the duration of a ``with`` block (or an
        ``async with`` block: :meth:`alock` is this method under its async name).

        Raises :class:`~txlock.LockTimeout` if the lock is not acquired within ``timeout``
        (the body never runs unlocked). With a ``ttl``, the lease is renewed in the
        background every ``ttl / 3`` seconds while the body runs. If the hold is lost
        anyway, ``on_lost(lease)`` is called (from the background thread), the context's
        ``lost`` flag is set, and :class:`~txlock.LockLost` is raised when the block exits.
        """
        from txlock._context import LockContext

        return LockContext(self, key, holder, timeout, ttl, on_lost)

    #: The ``async with`` form of :meth:`lock`: the same context object serves both worlds.
    alock = lock

    def lock_many(
        self,
        keys: Iterable[str],
        holder: str | None = None,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> MultiLockContext:
        """A context manager holding every key of ``keys`` for one ``holder``, all or nothing
        (an ``async with`` block too: :meth:`alock_many` is this method under its async name).

        The keys are deduplicated and taken in one canonical order (sorted by code point, the
        byte order of their UTF-8 encoding), so blocks with overlapping key sets never
        deadlock. ``timeout`` is one deadline for the whole set; when a key cannot be had,
        or the acquisition is cancelled or fails, every key already taken is released and
        :class:`~txlock.LockTimeout` (naming that key) or the error propagates. ``ttl`` and
        ``on_lost`` work per key as in :meth:`lock`. Not atomic: others can see the keys
        taken one by one. See :class:`~txlock.MultiLockContext` and docs/multi-key.md.
        """
        from txlock._multi import MultiLockContext

        return MultiLockContext(self, keys, holder, timeout, ttl, on_lost)

    #: The ``async with`` form of :meth:`lock_many`: the same context object serves both worlds.
    alock_many = lock_many


def _rebuild(cls: type[BaseLockManager], kwargs: dict[str, Any]) -> BaseLockManager:
    return cls(**kwargs)


