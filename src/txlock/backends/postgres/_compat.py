"""The few operations whose blocking and async forms genuinely differ.

``_store_async.py`` uses the async names; ``scripts/unasync.py`` renames them to the
blocking ones in the generated ``_store_sync.py``. Everything else is written once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref

from txlock._deadline import connection_taken, queue_budget
from txlock._errors import NotSent

__all__ = ["AsyncSlots", "Slots", "async_wait_for", "wait_for"]


def _no_slot(budget: float | None) -> NotSent:
    return NotSent(
        f"every connection this process may open to the database stayed busy for {budget or 0:.3g}s, past the"
        " call's deadline; make fewer calls at once, or pass pool= / async_pool= (psycopg_pool pools sized for them)"
    )


class Slots:
    """At most ``size`` connections in use at once, for the threads of this process."""

    def __init__(self, size: int) -> None:
        self.semaphore = threading.Semaphore(size)

    def acquire(self) -> None:
        budget = queue_budget()  # a call with a deadline waits for a connection no longer
        if not self.semaphore.acquire(timeout=budget):
            raise _no_slot(budget)
        connection_taken()

    def release(self) -> None:
        self.semaphore.release()


class AsyncSlots:
    """At most ``size`` connections in use at once, per event loop (an asyncio semaphore
    belongs to one loop)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.mutex = threading.Lock()
        self.by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self.mutex:
            semaphore = self.by_loop.get(loop)
            if semaphore is None:
                semaphore = self.by_loop[loop] = asyncio.Semaphore(self.size)
            return semaphore

    async def acquire(self) -> None:
        budget = queue_budget()  # a call with a deadline waits for a connection no longer
        if budget is None:
            await self._semaphore().acquire()
            connection_taken()
            return
        try:
            async with asyncio.timeout(budget):
                await self._semaphore().acquire()
        except TimeoutError:
            raise _no_slot(budget) from None

    def release(self) -> None:
        self._semaphore().release()


def wait_for(future: concurrent.futures.Future[bool]) -> bool:
    """The outcome of ``future`` (a LISTEN subscription), blocking."""
    return future.result()


async def async_wait_for(future: concurrent.futures.Future[bool]) -> bool:
    """The outcome of ``future`` (a LISTEN subscription), awaited."""
    return await asyncio.wrap_future(future)
