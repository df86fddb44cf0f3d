"""The few operations whose blocking and async forms genuinely differ.

``_store_async.py`` uses the async names; ``scripts/unasync.py`` renames them to the
blocking ones in the generated ``_store_sync.py``. Everything else is written once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from txlock._errors import NotSent
from txlock._slots import Slots as _Slots

__all__ = ["AsyncSlots", "Slots", "async_wait_for", "wait_for"]


def _no_slot(budget: float | None) -> NotSent:
    return NotSent(
        f"every connection this process may open to the database stayed busy for {budget or 0:.3g}s, past the"
        " call's deadline; make fewer calls at once, or pass pool= / async_pool= (psycopg_pool pools sized for them)"
    )


class Slots:
    """At most ``size`` connections in use at once, for the threads of this process."""

    __slots__ = ("queue",)

    def __init__(self, size: int) -> None:
        self.queue = _Slots(size, _no_slot)

    def acquire(self) -> None:
        """Take a connection slot (a call with a deadline waits no longer: NotSent)."""
        self.queue.enter()

    def release(self) -> None:
        """Give it back."""
        self.queue.leave()


class AsyncSlots:
    """At most ``size`` connections in use at once, per event loop."""

    __slots__ = ("queue",)

    def __init__(self, size: int) -> None:
        self.queue = _Slots(size, _no_slot)

    async def acquire(self) -> None:
        """Take a connection slot (a call with a deadline waits no longer: NotSent)."""
        await self.queue.aenter()

    def release(self) -> None:
        """Give it back (from the loop that took it)."""
        self.queue.tasks().release()


def wait_for(future: concurrent.futures.Future[bool]) -> bool:
    """The outcome of ``future`` (a LISTEN subscription), blocking."""
    return future.result()


async def async_wait_for(future: concurrent.futures.Future[bool]) -> bool:
    """The outcome of ``future`` (a LISTEN subscription), awaited."""
    return await asyncio.wrap_future(future)
