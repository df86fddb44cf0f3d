"""The only waiting loop, written once for both worlds, and the two drivers that run it.

A backend implements *single-attempt, non-blocking primitives* (see
:class:`~txlock._manager.BaseLockManager`). Each primitive returns a :data:`Request`: the
*work* its store must do (a script and its arguments, a statement, an operation on a
SQLite connection) and the function that *reads* the store's reply into the primitive's
result. The manager's transport runs the work: ``_exec(work)`` in the sync world,
``await _aexec(work)`` in the async one. So every primitive is written once, and each
backend has exactly one sync and one async transport method. A request whose ``read`` is
``None`` is already answered: its work *is* the answer (a store in this process that did
its work when the primitive was called, or an answer known without I/O).

The waiting logic is written once too, as generators (:func:`acquire_flow`,
:func:`wait_flow`) that *yield* the steps they need:

* a :data:`Request`: run it, send back what its ``read`` returns;
* a :class:`Sleep`: sleep on the waiter until woken or the time is up, send back ``True``
  if woken;
* :data:`NEW_WAITER`: send back a new waiter of the driver's world;
* :data:`CHECKPOINT`: nothing to do; where a cancellation that arrived while a request was
  in flight is delivered, now that the flow knows the outcome;
* a :class:`Cleanup`: run its request (a withdrawal, a release) whatever the call's
  deadline (:class:`~txlock._deadline.PatientScope`): the deadline may have passed, and a
  queue entry or grant left behind would be handed a lock no one takes.

:func:`run_flow` runs those steps with blocking calls; :func:`arun_flow` with ``await``.
The drivers hold no locking logic, only the mechanics of their world.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

from txlock._deadline import PatientScope, monotonic_deadline
from txlock._errors import BackendUnavailable, NotSent
from txlock._observe import note_contended
from txlock._types import Busy, Lease
from txlock._waiter import AsyncWaiter, ThreadWaiter, Waiter

if TYPE_CHECKING:
    from txlock._manager import BaseLockManager

__all__ = [
    "CHECKPOINT",
    "NEW_WAITER",
    "Cleanup",
    "Flow",
    "Request",
    "Sleep",
    "acquire_flow",
    "arun_flow",
    "no_io",
    "run_flow",
    "wait_flow",
]

R = TypeVar("R")
T = TypeVar("T")

#: The first and the longest pause, in seconds, between the looks of a waiter whose store
#: is unreachable (it keeps looking until its deadline; a wake-up cuts a pause short).
OUTAGE_BACKOFF: Final = (0.05, 1.0)

#: What a primitive returns: ``(work, read)``. The manager's transport executes ``work``
#: and ``read`` turns the reply into the primitive's result. ``read`` is ``None`` when no
#: I/O is needed: then ``work`` is the answer itself. A plain tuple, the cheapest object
#: CPython builds: primitives sit on every call's path.
Request: TypeAlias = tuple[Any, Callable[[Any], R] | None]

#: The request of a primitive with nothing to do and nothing to say.
NOTHING: Final[Request[None]] = (None, None)


def no_io(value: R) -> Request[R]:
    """A request answered without I/O: ``value`` is its answer."""
    return value, None


class Sleep:
    """Step: sleep on ``waiter`` for at most ``seconds``; the driver sends back ``True`` if woken."""

    __slots__ = ("seconds", "waiter")

    def __init__(self, waiter: Waiter, seconds: float) -> None:
        self.waiter = waiter
        self.seconds = seconds


class Cleanup:
    """Step: run ``request`` whatever the call's deadline: in turn for a connection, then
    with :data:`~txlock._deadline.DEADLINE_MARGIN` for its round trip."""

    __slots__ = ("request",)

    def __init__(self, request: Request[Any]) -> None:
        self.request = request


class _Marker(enum.Enum):
    NEW_WAITER = "new waiter"
    CHECKPOINT = "checkpoint"


#: Step: the driver sends back a new waiter of its world.
NEW_WAITER: Final = _Marker.NEW_WAITER
#: Step: nothing to do; a deferred cancellation is delivered here.
CHECKPOINT: Final = _Marker.CHECKPOINT

Step: TypeAlias = Request[Any] | Sleep | Cleanup | _Marker
Flow: TypeAlias = Generator[Step, Any, T]


def acquire_flow(
    manager: BaseLockManager, key: str, holder: str, ttl: float | None, timeout: float | None,
    first: Lease | Busy | None,
) -> Flow[Lease | None]:
    """Acquire ``key`` for ``holder`` within ``timeout``; the lease, or ``None`` on timeout.

    ``first`` is the outcome of an attempt already made by the caller (``None``: none yet).
    """
    deadline = monotonic_deadline(timeout)
    result: Lease | Busy | None = first
    waiter: Waiter | None = None
    outage = 0.0
    try:
        if result is None:
            try:
                result = yield manager._try_acquire(key, holder, ttl, None)
            except NotSent:
                return None  # no connection came free before the deadline: a plain timeout
        if not isinstance(result, Lease):
            note_contended()  # the contended path only: one context-variable read
        while not isinstance(result, Lease):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if waiter is None:
                    return None
                # The backend may have handed us the lock as we gave up: keep it.
                result = yield Cleanup(manager._withdraw(key, waiter))
                waiter = None
                if result is None:
                    return None
                break
            if waiter is None:
                waiter = yield NEW_WAITER
            else:
                assert isinstance(result, Busy)
                yield Sleep(waiter, min(remaining, result.retry_after))
                if waiter.lease is not None:  # handed over directly: nothing to ask
                    result = waiter.lease
                    break
            # Register (first time), then look again: a release between the last look
            # and the registration must not be missed.
            try:
                result = yield manager._try_acquire(key, holder, ttl, waiter)
                outage = 0.0
            except NotSent:
                # Every connection stayed busy past the call's deadline (NotSent means
                # that) and the look was never sent: a plain timeout. The waiter may be
                # queued from earlier looks: withdraw it, keeping a hand-off that landed.
                result = yield Cleanup(manager._withdraw(key, waiter))
                waiter = None
                if result is None:
                    return None
                break
            except BackendUnavailable:
                # A waiter rides out a store that went away (a restart, a failover) until
                # its deadline, looking again with backoff; a look whose reply was lost may
                # have been granted, and the next look by the same holder returns that grant.
                if deadline - time.monotonic() <= OUTAGE_BACKOFF[0]:
                    raise
                if not outage:
                    import logging  # here: logging costs start-up time to every process

                    logging.getLogger("txlock").warning(
                        "txlock: the store of %r is unreachable; the waiter keeps trying", key, exc_info=True
                    )
                outage = min(max(outage * 2, OUTAGE_BACKOFF[0]), OUTAGE_BACKOFF[1])
                result = Busy(None, outage)
        # A cancellation that arrived while the granting request was in flight is
        # delivered here, inside the try, so the grant is released, not leaked.
        yield CHECKPOINT
        return result  # type: ignore[return-value]  # a Lease: the loop only ends on one
    except BaseException:
        # Cancelled or interrupted: leave no hold and no queue entry behind. A grant
        # that landed is released, which hands the lock on to the next waiter.
        late = None
        if waiter is not None:
            late = yield Cleanup(manager._withdraw(key, waiter))
        if late is not None or isinstance(result, Lease):
            yield Cleanup(manager._release(key, holder))
        raise


def wait_flow(manager: BaseLockManager, key: str, timeout: float | None) -> Flow[bool]:
    """Wait until ``key`` is free, without taking it; ``False`` on timeout."""
    deadline = monotonic_deadline(timeout)
    try:
        state = yield manager._watch(key, None)
    except NotSent:
        return False  # no connection came free before the deadline: a plain timeout
    if state is None:
        return True
    if deadline <= time.monotonic():
        return False
    waiter = yield NEW_WAITER
    try:
        while True:
            try:
                state = yield manager._watch(key, waiter)
            except NotSent:
                return False  # as above; the waiter is withdrawn below
            if state is None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            yield Sleep(waiter, min(remaining, state.retry_after))
    finally:
        yield Cleanup(manager._withdraw(key, waiter))


def run_flow(manager: BaseLockManager, flow: Flow[T]) -> T:
    """Run ``flow`` on this thread, blocking."""
    value: Any = None
    exc: BaseException | None = None
    while True:
        try:
            step = flow.send(value) if exc is None else flow.throw(exc)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        exc = None
        try:
            if type(step) is tuple:
                work, read = step
                value = work if read is None else read(manager._exec(work))
            elif type(step) is Sleep:
                waiter = step.waiter
                assert isinstance(waiter, ThreadWaiter)
                value = waiter.wait(step.seconds)
            elif step is NEW_WAITER:
                value = ThreadWaiter()
            elif type(step) is Cleanup:
                value = _clean_up(manager, step.request)
            else:
                value = None
        except BaseException as error:  # KeyboardInterrupt too: the flow cleans up
            exc = error


def _clean_up(manager: BaseLockManager, request: Request[Any]) -> Any:
    work, read = request
    if read is None:
        return work
    with PatientScope():
        return read(manager._exec(work))


async def _aclean_up(manager: BaseLockManager, request: Request[Any]) -> tuple[Any, BaseException | None]:
    work, read = request
    if read is None:
        return work, None
    with PatientScope():  # the task made below copies the context, scope included
        call = manager._aexec(work)
        if manager._async_io:
            reply, deferred = await _complete(call)
            return read(reply), deferred
        return read(await call), None


async def arun_flow(manager: BaseLockManager, flow: Flow[T]) -> T:
    """Run ``flow`` on the running event loop.

    On a store whose transport does network I/O, a request in flight is completed even if
    the task is cancelled meanwhile; the cancellation is delivered to the flow once the
    outcome is known, so a grant that landed is released instead of leaked.
    """
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
            # A cancellation arrived while a request was in flight: deliver it now that the
            # flow knows the request's outcome.
            exc, deferred, value = deferred, None, None
            continue
        try:
            if type(step) is tuple:
                work, read = step
                if read is None:
                    value = work
                elif manager._async_io:
                    reply, deferred = await _complete(manager._aexec(work))
                    value = read(reply)
                else:
                    value = read(await manager._aexec(work))
            elif type(step) is Sleep:
                waiter = step.waiter
                assert isinstance(waiter, AsyncWaiter)
                value = await waiter.wait(step.seconds)
            elif step is NEW_WAITER:
                value = AsyncWaiter()
            elif type(step) is Cleanup:
                value, deferred = await _aclean_up(manager, step.request)
            else:
                value = None
        except BaseException as error:
            exc = error


async def _complete(call: Any) -> tuple[Any, BaseException | None]:
    """Await ``call`` to completion even if the caller is cancelled meanwhile.

    Returns the result and the cancellation to deliver afterwards (or ``None``).
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
