"""Wake-up handles for waiting calls, one kind per world.

A backend that learns a lock may have become free calls :meth:`Waiter.wake` from any
thread. A thread waiter sleeps on a pre-acquired ``threading.Lock`` (the cheapest
cross-thread wake-up CPython has); a task waiter sleeps on a future of its own event loop
and is woken with ``call_soon_threadsafe``, so no thread is parked per async waiter.
Spurious wake-ups are allowed: the waiting loop always re-checks the store.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from txlock._types import Lease

__all__ = ["AsyncWaiter", "ThreadWaiter", "Waiter"]


class Waiter:
    """Base of both waiter kinds. ``data`` belongs to the backend that queued the waiter;
    a backend that hands the lock directly to a waiter also sets ``lease``, so the waiting
    loop returns it without asking the store again."""

    __slots__ = ("data", "lease")

    def __init__(self) -> None:
        self.data: Any = None
        self.lease: Lease | None = None

    def wake(self) -> None:
        """Wake the waiting call. Safe from any thread, any number of times."""
        raise NotImplementedError


class ThreadWaiter(Waiter):
    """A waiter for a blocking call on some thread."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        try:  # noqa: SIM105 - contextlib.suppress costs more on this hot path
            self._lock.release()
        except RuntimeError:  # already woken and not yet consumed
            pass

    def wait(self, timeout: float) -> bool:
        """Block until woken or ``timeout`` seconds pass; ``True`` if woken."""
        if timeout <= 0:
            return self._lock.acquire(False)
        if math.isinf(timeout):
            return self._lock.acquire()
        return self._lock.acquire(True, min(timeout, threading.TIMEOUT_MAX))


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class AsyncWaiter(Waiter):
    """A waiter for a coroutine on one event loop."""

    __slots__ = ("_fut", "_loop", "_pending", "_thread")

    def __init__(self) -> None:
        super().__init__()
        # An AsyncWaiter only exists inside a running loop, so asyncio is already imported;
        # the module does not import it itself, to keep sync-only start-up lean.
        self._loop = sys.modules["asyncio"].get_running_loop()
        self._thread = threading.get_ident()
        self._fut: asyncio.Future[bool] | None = None
        self._pending = False

    def _set(self) -> None:
        self._pending = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(True)

    def wake(self) -> None:
        if threading.get_ident() == self._thread:
            self._set()
        else:
            try:  # noqa: SIM105 - hot path
                self._loop.call_soon_threadsafe(self._set)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    async def wait(self, timeout: float) -> bool:
        """Wait until woken or ``timeout`` seconds pass; ``True`` if woken."""
        if self._pending:
            self._pending = False
            return True
        if timeout <= 0:
            return False
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._fut = fut
        handle = None if math.isinf(timeout) else self._loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            self._fut = None
            self._pending = False
            if handle is not None:
                handle.cancel()
