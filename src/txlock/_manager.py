"""The public base class every manager derives from, and the only waiting loop.

A backend implements a handful of *single-attempt, non-blocking primitives* (the methods
starting with ``_`` below: ``_try_acquire``, ``_release``, ``_extend``, ``_holder``,
``_inspect``, ``_list``, ``_force_release``, ``_watch``, ``_withdraw`` and, optionally,
``_wait``). Everything else (validation, deadlines, the wait/retry loop, cancellation,
context managers and lease renewal) lives here, once.

Sync and async without twins: the waiting logic is written once, as generators
(``_acquire_flow`` and ``_wait_flow``) that *yield* the steps they need ("call primitive X",
"sleep on this waiter for T seconds", "give me a waiter"). A thin sync driver runs those
steps with blocking calls; a thin async driver runs them with ``await``. The drivers contain
no locking logic, only the mechanics of their world.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar

from txlock import _scheduler
from txlock._errors import ConfigurationError, LockLost, LockTimeout, NotLockHolder
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import check_hold_timeout, check_holder, check_key, check_timeout
from txlock._waiter import AsyncWaiter, ThreadWaiter, Waiter

__all__ = ["DEADLINE_MARGIN", "BaseLockManager", "LockContext", "call_budget", "default_holder"]

T = TypeVar("T")

# Steps yielded by the flows to their driver.
_CALL = 0  # (_CALL, primitive_name, args) -> the primitive's result
_WAIT = 1  # (_WAIT, key, waiter, seconds) -> True if woken
_WAITER = 2  # (_WAITER,) -> a new Waiter of the driver's world
_DONE = 3  # (_DONE,) -> None; a no-op where a deferred cancellation is delivered

Step = tuple[Any, ...]
Flow = Generator[Step, Any, T]


#: Seconds past its deadline that an acquire or wait may take when the store does not
#: answer: every network call it makes is cut off after the time left plus this margin, so
#: one round trip always gets a fair chance, even with ``timeout=0``.
DEADLINE_MARGIN = 1.0

#: The monotonic time by which the current acquire or wait must end (``None``: no deadline).
#: Set around the whole call, so the backends' network calls (and worker threads started
#: with ``asyncio.to_thread``, which copy the context) can bound their waits by it.
_call_deadline: ContextVar[float | None] = ContextVar("txlock_call_deadline", default=None)


def call_budget() -> float | None:
    """Seconds the current network call may take, or ``None`` when nothing bounds it."""
    deadline = _call_deadline.get()
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0) + DEADLINE_MARGIN


def _check_lease(lease: object) -> None:
    if not isinstance(lease, Lease):
        hint = " (acquire_lease returns None when it times out: check for it first)" if lease is None else ""
        raise TypeError(f"renew() needs the Lease that acquire_lease returned, not {type(lease).__name__}{hint}")


class _Bounded:
    """``with _Bounded(seconds):`` sets the call deadline for the block (``_UNBOUNDED``: none)."""

    __slots__ = ("deadline", "token")

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def __enter__(self) -> None:
        if self.deadline is not None:
            self.token = _call_deadline.set(self.deadline)

    def __exit__(self, *exc: object) -> None:
        if self.deadline is not None:
            _call_deadline.reset(self.token)


_UNBOUNDED = _Bounded(None)


def default_holder() -> str:
    """A holder name unique to this call: ``host:pid:random``."""
    import socket
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _deadline(timeout: float | None) -> float:
    if timeout is None or math.isinf(timeout):
        return math.inf
    return time.monotonic() + timeout


_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


def parse_bool(name: str, value: str) -> bool:
    """Parse a boolean URL option, naming the option and the accepted words on error."""
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigurationError(f"option {name}={value!r} is not a boolean; use true or false")


def parse_seconds(name: str, value: str, *, positive: bool = False) -> float | None:
    """Parse a number-of-seconds URL option (``none`` allowed for 'no limit')."""
    if value.strip().lower() in {"", "none", "null"}:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(f"option {name}={value!r} is not a number of seconds") from None
    if math.isnan(seconds) or seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(f"option {name}={value!r} must be {bound} seconds")
    return seconds


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
    #: ``True`` when async primitives perform real network I/O (then they are shielded
    #: from cancellation so the outcome of an in-flight grant is always known).
    _async_io: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Async acquires may make their first attempt with the sync primitive when the
        # backend's async attempt is just that primitive (local media).
        cls._local_attempts = not cls._async_io and cls._atry_acquire is BaseLockManager._atry_acquire

    _local_attempts: ClassVar[bool] = False

    def __init__(self, *, acquire_timeout: float | None = None, raise_on_timeout: bool = False) -> None:
        self._default_timeout = check_timeout(acquire_timeout, "acquire_timeout")
        if not isinstance(raise_on_timeout, bool):
            raise TypeError(f"raise_on_timeout must be a bool, not {type(raise_on_timeout).__name__}")
        self._raise_on_timeout = raise_on_timeout

    def _check_names(self, key: object, holder: object) -> None:
        """Raise the error for a bad key or holder. The acquire and release paths call it
        only when their inline test (two ``str`` within the limits) fails."""
        self._valid_key(key)
        self._valid_holder(holder)

    def _deadline(self, seconds: float | None) -> _Bounded | None:
        """The scope that carries a call's deadline down to the store's calls (read there
        through ``call_budget``), or ``None`` when there is none to carry: no timeout, a
        store that cannot stall, or a deadline already set by the call around this one."""
        if not self._bounds_calls or seconds is None or seconds == math.inf or _call_deadline.get() is not None:
            return None
        return _Bounded(seconds)

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

    # ------------------------------------------------------------------ primitives
    # Subclasses implement the sync primitives. The async forms default to calling the
    # sync ones, which is right for local media whose primitives never block for long.

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        """One attempt. Grant (or re-grant to the same holder, resetting the expiry to
        ``ttl``) and return the lease, or return ``Busy``. With a ``waiter``, register it
        so that a later release wakes it; registering twice keeps its place."""
        raise NotImplementedError

    def _release(self, key: str, holder: str) -> str | None:
        """Free the key if ``holder`` holds it. Return ``None`` when released or not held
        at all, or the name of the other holder that holds it (nothing changes then)."""
        raise NotImplementedError

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        """Renew the grant ``token`` of ``holder`` to end ``ttl`` seconds from now (or bind it
        to this process when ``None``); ``None`` if that grant no longer holds the key."""
        raise NotImplementedError

    def _holder(self, key: str) -> str | None:
        """The current holder of the key, or ``None`` when free or expired."""
        info = self._inspect(key)
        return None if info is None else info.holder

    def _inspect(self, key: str) -> LockInfo | None:
        raise NotImplementedError

    def _list(self, prefix: str | None) -> list[LockInfo]:
        raise NotImplementedError

    def _force_release(self, key: str) -> bool:
        raise NotImplementedError

    def _watch(self, key: str, waiter: Waiter | None) -> Busy | None:
        """``None`` when the key is free; else ``Busy``, with ``waiter`` registered to be
        woken when the key is freed."""
        holder = self._holder(key)
        return None if holder is None else Busy(holder, 0.001)

    def _withdraw(self, key: str, waiter: Waiter) -> Lease | None:
        """Forget a waiter. If the backend had already handed it the lock, return that lease."""
        return None

    def _wait(self, key: str, waiter: ThreadWaiter, timeout: float) -> bool:
        """Block until ``waiter`` is woken or ``timeout`` passes."""
        return waiter.wait(timeout)

    async def _atry_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        return self._try_acquire(key, holder, ttl, waiter)

    async def _arelease(self, key: str, holder: str) -> str | None:
        return self._release(key, holder)

    async def _aextend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        return self._extend(key, holder, token, ttl)

    async def _aholder(self, key: str) -> str | None:
        return self._holder(key)

    async def _ainspect(self, key: str) -> LockInfo | None:
        return self._inspect(key)

    async def _alist(self, prefix: str | None) -> list[LockInfo]:
        return self._list(prefix)

    async def _aforce_release(self, key: str) -> bool:
        return self._force_release(key)

    async def _awatch(self, key: str, waiter: Waiter | None) -> Busy | None:
        return self._watch(key, waiter)

    async def _awithdraw(self, key: str, waiter: Waiter) -> Lease | None:
        return self._withdraw(key, waiter)

    async def _await(self, key: str, waiter: AsyncWaiter, timeout: float) -> bool:
        return await waiter.wait(timeout)

    # ------------------------------------------------------------------ flows (the logic, once)

    def _acquire_flow(
        self, key: str, holder: str, ttl: float | None, timeout: float | None, first: Lease | Busy | None
    ) -> Flow[Lease | None]:
        deadline = _deadline(timeout)
        result: Lease | Busy | None = first
        waiter: Waiter | None = None
        try:
            if result is None:
                result = yield (_CALL, "_try_acquire", (key, holder, ttl, None))
            while not isinstance(result, Lease):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if waiter is None:
                        return None
                    # The backend may have handed us the lock as we gave up: keep it.
                    result = yield (_CALL, "_withdraw", (key, waiter))
                    waiter = None
                    if result is None:
                        return None
                    break
                if waiter is None:
                    waiter = yield (_WAITER,)
                else:
                    assert isinstance(result, Busy)
                    yield (_WAIT, key, waiter, min(remaining, result.retry_after))
                    if waiter.lease is not None:  # handed over directly: nothing to ask
                        result = waiter.lease
                        break
                # Register (first time), then look again: a release between the last look
                # and the registration must not be missed.
                result = yield (_CALL, "_try_acquire", (key, holder, ttl, waiter))
            # A cancellation that arrived while the granting call was in flight is
            # delivered here, inside the try, so the grant is released, not leaked.
            yield (_DONE,)
            return result  # type: ignore[return-value]  # a Lease: the loop only ends on one
        except BaseException:
            # Cancelled or interrupted: leave no hold and no queue entry behind. A grant
            # that landed is released, which hands the lock on to the next waiter.
            late = None
            if waiter is not None:
                late = yield (_CALL, "_withdraw", (key, waiter))
            if late is not None or isinstance(result, Lease):
                yield (_CALL, "_release", (key, holder))
            raise

    def _wait_flow(self, key: str, timeout: float | None) -> Flow[bool]:
        deadline = _deadline(timeout)
        state = yield (_CALL, "_watch", (key, None))
        if state is None:
            return True
        if deadline <= time.monotonic():
            return False
        waiter = yield (_WAITER,)
        try:
            while True:
                state = yield (_CALL, "_watch", (key, waiter))
                if state is None:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                yield (_WAIT, key, waiter, min(remaining, state.retry_after))
        finally:
            yield (_CALL, "_withdraw", (key, waiter))

    # ------------------------------------------------------------------ drivers (mechanics only)

    def _run(self, flow: Flow[T]) -> T:
        value: Any = None
        exc: BaseException | None = None
        while True:
            try:
                step = flow.send(value) if exc is None else flow.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            exc = None
            try:
                op = step[0]
                if op == _CALL:
                    value = getattr(self, step[1])(*step[2])
                elif op == _WAIT:
                    value = self._wait(step[1], step[2], step[3])
                elif op == _WAITER:
                    value = ThreadWaiter()
                else:
                    value = None
            except BaseException as error:  # KeyboardInterrupt too: the flow cleans up
                exc = error

    async def _arun(self, flow: Flow[T]) -> T:
        value: Any = None
        exc: BaseException | None = None
        deferred: BaseException | None = None
        while True:
            try:
                step = flow.send(value) if exc is None else flow.throw(exc)
            except StopIteration as stop:
                if deferred is not None:
                    raise deferred from None
                return stop.value  # type: ignore[no-any-return]
            exc = None
            if deferred is not None:
                # A cancellation arrived while a primitive was in flight: deliver it now
                # that the flow knows the primitive's outcome.
                exc, deferred, value = deferred, None, None
                continue
            try:
                op = step[0]
                if op == _CALL:
                    call = getattr(self, "_a" + step[1][1:])(*step[2])
                    if self._async_io:
                        value, deferred = await _complete(call)
                    else:
                        value = await call
                elif op == _WAIT:
                    value = await self._await(step[1], step[2], step[3])
                elif op == _WAITER:
                    value = AsyncWaiter()
                else:
                    value = None
            except BaseException as error:
                exc = error

    # ------------------------------------------------------------------ Prefect's protocol

    def _timeout(self, acquire_timeout: object) -> float | None:
        if acquire_timeout is None:
            return self._default_timeout
        return check_timeout(acquire_timeout, "acquire_timeout")

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
        return await self.aacquire_lease(key, holder, acquire_timeout, hold_timeout) is not None

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``key`` held by ``holder``; the longest waiter proceeds.

        A key that is not held (free or expired) is a no-op. A key held by another holder
        raises :class:`~txlock.NotLockHolder` (a ``ValueError``) with Prefect's message.
        """
        if (
            type(key) is not str or type(holder) is not str
            or len(key) > self.max_key_length or len(holder) > self.max_holder_length
        ):  # inline, not in _check_names: the hot path pays no call
            self._check_names(key, holder)
        other = self._release(key, holder)
        if other is not None:
            raise NotLockHolder(key, holder, other)

    async def arelease_lock(self, key: str, holder: str) -> None:
        """Async form of :meth:`release_lock`."""
        if (
            type(key) is not str or type(holder) is not str
            or len(key) > self.max_key_length or len(holder) > self.max_holder_length
        ):  # inline, not in _check_names: the hot path pays no call
            self._check_names(key, holder)
        other = await self._arelease(key, holder)
        if other is not None:
            raise NotLockHolder(key, holder, other)

    def is_locked(self, key: str) -> bool:
        """Whether ``key`` is held right now (by anyone), read from the shared store."""
        return self._holder(self._valid_key(key)) is not None

    async def ais_locked(self, key: str) -> bool:
        """Async form of :meth:`is_locked`."""
        return await self._aholder(self._valid_key(key)) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether ``holder`` holds ``key`` right now, read from the shared store."""
        self._valid_holder(holder)
        return self._holder(self._valid_key(key)) == holder

    async def ais_lock_holder(self, key: str, holder: str) -> bool:
        """Async form of :meth:`is_lock_holder`."""
        self._valid_holder(holder)
        return await self._aholder(self._valid_key(key)) == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is free without taking it: ``True`` when free, ``False`` on
        timeout. ``timeout=0`` checks once; ``None`` waits forever."""
        self._valid_key(key)
        seconds = check_timeout(timeout, "timeout")
        with self._deadline(seconds) or _UNBOUNDED:
            return self._run(self._wait_flow(key, seconds))

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async form of :meth:`wait_for_lock`."""
        self._valid_key(key)
        seconds = check_timeout(timeout, "timeout")
        with self._deadline(seconds) or _UNBOUNDED:
            return await self._arun(self._wait_flow(key, seconds))

    # ------------------------------------------------------------------ the rich API

    def acquire_lease(
        self, key: str, holder: str, timeout: float | None = None, ttl: float | None = None
    ) -> Lease | None:
        """Like :meth:`acquire_lock`, but return the :class:`~txlock.Lease` (with its fencing
        token) or ``None`` on timeout."""
        if (
            type(key) is not str or type(holder) is not str
            or len(key) > self.max_key_length or len(holder) > self.max_holder_length
        ):  # inline, not in _check_names: the hot path pays no call
            self._check_names(key, holder)
        wait = self._default_timeout if timeout is None else check_timeout(timeout, "acquire_timeout")
        if ttl is not None:
            ttl = check_hold_timeout(ttl, "hold_timeout")
        scope = self._deadline(wait)
        if scope is not None:
            with scope:  # the same call, now with the deadline set
                return self.acquire_lease(key, holder, wait, ttl)
        first = self._try_acquire(key, holder, ttl, None)
        if isinstance(first, Lease):
            return first
        lease = self._run(self._acquire_flow(key, holder, ttl, wait, first))
        if lease is None:
            self._timed_out(key, wait)
        return lease

    async def aacquire_lease(
        self, key: str, holder: str, timeout: float | None = None, ttl: float | None = None
    ) -> Lease | None:
        """Async form of :meth:`acquire_lease`."""
        if (
            type(key) is not str or type(holder) is not str
            or len(key) > self.max_key_length or len(holder) > self.max_holder_length
        ):  # inline, not in _check_names: the hot path pays no call
            self._check_names(key, holder)
        wait = self._default_timeout if timeout is None else check_timeout(timeout, "acquire_timeout")
        if ttl is not None:
            ttl = check_hold_timeout(ttl, "hold_timeout")
        scope = self._deadline(wait)
        if scope is not None:
            with scope:
                return await self.aacquire_lease(key, holder, wait, ttl)
        first = None
        if self._local_attempts:
            # The attempt cannot block (local medium): make it without the driver.
            first = self._try_acquire(key, holder, ttl, None)
            if isinstance(first, Lease):
                return first
        lease = await self._arun(self._acquire_flow(key, holder, ttl, wait, first))
        if lease is None:
            self._timed_out(key, wait)
        return lease

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a grant to end ``ttl`` seconds from now (default: its own ttl).

        Raises :class:`~txlock.LockLost` when the grant no longer holds the key.
        """
        _check_lease(lease)
        ttl = check_hold_timeout(lease.ttl if ttl is None else ttl, "ttl")
        new = self._extend(lease.key, lease.holder, lease.token, ttl)
        if new is None:
            raise LockLost(lease.key, lease.holder, "it expired or was released before renewal")
        return new

    async def arenew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Async form of :meth:`renew`."""
        _check_lease(lease)
        ttl = check_hold_timeout(lease.ttl if ttl is None else ttl, "ttl")
        new = await self._aextend(lease.key, lease.holder, lease.token, ttl)
        if new is None:
            raise LockLost(lease.key, lease.holder, "it expired or was released before renewal")
        return new

    def inspect(self, key: str) -> LockInfo | None:
        """Describe the current hold on ``key``, or ``None`` when it is free."""
        return self._inspect(self._valid_key(key))

    async def ainspect(self, key: str) -> LockInfo | None:
        """Async form of :meth:`inspect`."""
        return await self._ainspect(self._valid_key(key))

    def list_locks(self, prefix: str | None = None) -> list[LockInfo]:
        """Every lock held now (whose key starts with ``prefix``), sorted by key."""
        if prefix is not None:
            check_key(prefix)
        return self._list(prefix)

    async def alist_locks(self, prefix: str | None = None) -> list[LockInfo]:
        """Async form of :meth:`list_locks`."""
        if prefix is not None:
            check_key(prefix)
        return await self._alist(prefix)

    def force_release(self, key: str) -> bool:
        """Free ``key`` whoever holds it (an operator's tool); ``True`` if it was held.

        The holder learns of it at its next renewal, release or ``is_lock_holder`` check.
        """
        return self._force_release(self._valid_key(key))

    async def aforce_release(self, key: str) -> bool:
        """Async form of :meth:`force_release`."""
        return await self._aforce_release(self._valid_key(key))

    def lock(
        self,
        key: str,
        holder: str | None = None,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> LockContext:
        """A context manager holding ``key`` for the duration of a ``with`` block.

        Raises :class:`~txlock.LockTimeout` if the lock is not acquired within ``timeout``
        (the body never runs unlocked). With a ``ttl``, the lease is renewed in the
        background every ``ttl / 3`` seconds while the body runs. If the hold is lost
        anyway, ``on_lost(lease)`` is called (from the background thread), the context's
        ``lost`` flag is set, and :class:`~txlock.LockLost` is raised when the block exits.
        """
        return LockContext(self, key, holder, timeout, ttl, on_lost)

    def alock(
        self,
        key: str,
        holder: str | None = None,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> LockContext:
        """The ``async with`` form of :meth:`lock`."""
        return LockContext(self, key, holder, timeout, ttl, on_lost)


async def _complete(call: Any) -> tuple[Any, BaseException | None]:
    """Await ``call`` to completion even if the caller is cancelled meanwhile.

    Returns the result and the cancellation to deliver afterwards (or ``None``). Knowing
    the outcome of an in-flight acquire is what lets a cancelled acquire release a grant
    that landed instead of leaking it.
    """
    import asyncio  # here, not at the top: asyncio costs start-up time to sync-only users

    task = asyncio.ensure_future(call)
    deferred: BaseException | None = None
    while True:
        try:
            return await asyncio.shield(task), deferred
        except asyncio.CancelledError as cancel:
            if task.done() and task.cancelled():
                raise
            deferred = cancel


def _rebuild(cls: type[BaseLockManager], kwargs: dict[str, Any]) -> BaseLockManager:
    return cls(**kwargs)


class _Hold:
    """One hold shared by the nested (or concurrent) blocks of one holder on one key.

    ``blocks`` are the blocks inside it or entering it; the store is released when the last
    leaves. A lost hold marks them all.
    """

    __slots__ = ("blocks", "guard", "job", "lease", "lost")

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.lost = False
        self.job: _scheduler.Job | None = None
        self.blocks: list[LockContext] = []
        self.guard = threading.Lock()


#: The holds of the ``lock()`` / ``alock()`` blocks running in this process, by manager
#: object, key and holder. An entry lives only while one of its blocks does (the blocks
#: reference the manager, so its ``id`` cannot be reused meanwhile).
_holds: dict[tuple[int, str, str], _Hold] = {}
_holds_mutex = threading.Lock()


def _reset_holds_mutex() -> None:
    global _holds_mutex
    _holds_mutex = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_reset_holds_mutex)


class LockContext:
    """What :meth:`BaseLockManager.lock` and :meth:`~BaseLockManager.alock` return.

    Use it with ``with`` (sync) or ``async with`` (async). Inside the block:

    * ``lease`` is the current :class:`~txlock.Lease` (its ``token`` is the fencing token);
    * ``lost`` turns ``True`` if the hold ends before the block does;
    * ``check()`` raises :class:`~txlock.LockLost` if it has;
    * ``nested`` is ``True`` when the block joined a hold another block already had.

    Blocks are reentrant per holder: a block for a key and holder that this manager already
    holds through another running block (nested in it, or in another thread or task) joins
    that hold instead of acquiring again. Such a block takes no time, shares the outer
    lease and token, and its ``timeout`` and ``ttl`` are not used; the store is released
    when the last of the blocks exits.
    """

    def __init__(
        self,
        manager: BaseLockManager,
        key: str,
        holder: str | None,
        timeout: float | None,
        ttl: float | None,
        on_lost: Callable[[Lease], object] | None,
    ) -> None:
        self.manager = manager
        self.key = manager._valid_key(key)
        self.holder = default_holder() if holder is None else manager._valid_holder(holder)
        self.timeout = check_timeout(timeout, "timeout")
        self.ttl = check_hold_timeout(ttl, "ttl")
        self.on_lost = on_lost
        self.lost = False
        self.nested = False
        self._hold: _Hold | None = None

    def __repr__(self) -> str:
        if self._hold is None:
            state = "not entered"
        elif self.lost:
            state = "lost"
        elif self._hold.lease is None:
            state = "acquiring"
        else:
            state = f"held, token {self._hold.lease.token}" + (", nested" if self.nested else "")
        return f"<LockContext key={self.key!r} holder={self.holder!r} {state} on {self.manager!r}>"

    @property
    def lease(self) -> Lease:
        """The lease held by the block (raises ``RuntimeError`` outside the block)."""
        hold = self._hold
        if hold is None or hold.lease is None:
            raise RuntimeError(f"lock {self.key!r} is not held by this context")
        return hold.lease

    @property
    def token(self) -> int:
        """The fencing token of the current grant."""
        return self.lease.token

    def check(self) -> None:
        """Raise :class:`~txlock.LockLost` if the hold has been lost."""
        if self.lost:
            raise LockLost(self.key, self.holder, "it expired or was released while the block ran")

    # The shared halves of enter and exit; the four dunders below only do the I/O.

    def _join(self) -> bool:
        """Take part in this holder's hold on the key; ``True`` if it is already held."""
        if self._hold is not None:
            raise RuntimeError(
                f"this lock({self.key!r}) context is already in use; call lock() again for a nested block"
            )
        ident = (id(self.manager), self.key, self.holder)
        with _holds_mutex:
            hold = _holds.get(ident)
            if hold is None or hold.lost:
                hold = _holds[ident] = _Hold()
            hold.blocks.append(self)
            self._hold = hold
            self.lost = False
            self.nested = hold.lease is not None
            return self.nested

    def _entered(self, lease: Lease) -> LockContext:
        hold = self._hold
        assert hold is not None
        if self.ttl is None:
            hold.lease = lease  # no renewal job to race with (unless another block started one)
            if hold.job is None:
                return self
        with hold.guard:
            hold.lease = lease
            if self.ttl is not None and hold.job is None:
                renew = functools.partial(self._renew, self.manager, hold, self.ttl)
                hold.job = _scheduler.schedule(renew, self.ttl / 3, name=f"renew {self.key!r}")
        return self

    def _timeout_error(self) -> LockTimeout:
        return LockTimeout(self.key, self.timeout if self.timeout is not None else self.manager._default_timeout)

    def _drop(self, hold: _Hold) -> bool:
        """Leave the hold; ``True`` if this was its last block (then the store is released)."""
        with _holds_mutex:
            hold.blocks.remove(self)
            if hold.blocks:
                return False
            ident = (id(self.manager), self.key, self.holder)
            if _holds.get(ident) is hold:
                del _holds[ident]
            return hold.lease is not None

    @staticmethod
    def _renew(manager: BaseLockManager, hold: _Hold, ttl: float) -> bool:
        with hold.guard:
            lease = hold.lease
            if lease is None or hold.lost or not hold.blocks:
                return False
            new = manager._extend(lease.key, lease.holder, lease.token, ttl)
            if new is not None:
                hold.lease = new
                return True
            hold.lost = True
            with _holds_mutex:
                blocks = list(hold.blocks)
        for block in blocks:
            block.lost = True
        for block in blocks:
            if block.on_lost is not None:
                block.on_lost(lease)
        return False

    def _leaving(self) -> bool:
        """Leave the hold; ``True`` if the store must be released (the last block, not lost)."""
        hold = self._hold
        assert hold is not None
        if not self._drop(hold):
            return False
        job = hold.job
        if job is None:
            return not hold.lost  # nothing renews it, so nothing else can change it
        job.cancel()
        hold.job = None
        with hold.guard:  # a renewal in flight finishes first
            return not hold.lost

    def _left(self, other: str | None, failed: bool) -> None:
        hold, self._hold = self._hold, None
        if other is not None or (hold is not None and hold.lost):
            self.lost = True
        if self.lost and not failed:
            self.check()

    def __enter__(self) -> LockContext:
        if self._join():
            return self
        try:
            lease = self.manager.acquire_lease(self.key, self.holder, self.timeout, self.ttl)
            if lease is None:
                raise self._timeout_error()
        except BaseException:
            # Another block of this holder may have been granted meanwhile and left.
            self._left(self.manager._release(self.key, self.holder) if self._leaving() else None, True)
            raise
        return self._entered(lease)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        other = self.manager._release(self.key, self.holder) if self._leaving() else None
        self._left(other, exc_type is not None)

    async def __aenter__(self) -> LockContext:
        if self._join():
            return self
        try:
            lease = await self.manager.aacquire_lease(self.key, self.holder, self.timeout, self.ttl)
            if lease is None:
                raise self._timeout_error()
        except BaseException:
            other = await self.manager._arelease(self.key, self.holder) if self._leaving() else None
            self._left(other, True)
            raise
        return self._entered(lease)

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        other = await self.manager._arelease(self.key, self.holder) if self._leaving() else None
        self._left(other, exc_type is not None)
