"""The queue for a network store's connections: at most ``size`` requests in flight.

Redis and PostgreSQL both cap the connections a manager opens (per process for threads,
per event loop for tasks); a request beyond the cap waits here for one to come free,
instead of failing with the driver's "too many connections". The queue serves requests in
arrival order, with one exception: a request made inside a
:class:`~txlock._deadline.PatientScope` (a waiter's withdrawal or a release while a call
ends) goes before every ordinary one. Such a request must be made, and it is made for a
call whose deadline has passed: behind a crowd it would keep that call waiting for the
whole queue, seconds past its timeout.

A request with a deadline waits until :func:`~txlock._deadline.queue_budget` runs out and
then raises :class:`~txlock.NotSent`: nothing was sent, so the caller knows the outcome.
A freed connection is handed straight to the next request in line, so a newcomer never
overtakes a queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Any

from txlock._deadline import connection_taken, is_patient, queue_budget
from txlock._errors import NotSent

__all__ = ["Slots", "TaskSlots", "ThreadSlots"]


class ThreadSlots:
    """At most ``size`` requests in flight from the threads of this process."""

    __slots__ = ("first", "free", "mutex", "normal")

    def __init__(self, size: int) -> None:
        self.mutex = threading.Lock()
        self.free = size
        # Each entry: [a lock the waiting thread blocks on, granted?]
        self.first: collections.deque[list[Any]] = collections.deque()
        self.normal: collections.deque[list[Any]] = collections.deque()

    def acquire(self, budget: float | None, patient: bool) -> bool:
        """Take a slot; ``False`` if none came free within ``budget`` seconds."""
        with self.mutex:
            if self.free > 0:
                self.free -= 1
                return True
            gate = threading.Lock()
            gate.acquire()
            entry = [gate, False]
            queue = self.first if patient else self.normal
            queue.append(entry)
        try:
            gate.acquire(timeout=-1 if budget is None else budget)
        except BaseException:
            self._leave(queue, entry)
            raise
        return self._leave(queue, entry, keep=True)

    def _leave(self, queue: collections.deque[list[Any]], entry: list[Any], keep: bool = False) -> bool:
        with self.mutex:
            granted: bool = entry[1]
            if not granted:
                queue.remove(entry)
                return False
        if not keep:  # granted as we were interrupted: pass the slot on
            self.release()
        return keep

    def release(self) -> None:
        """Give a slot back: to the first in line, or to the pool."""
        with self.mutex:
            for queue in (self.first, self.normal):
                if queue:
                    entry = queue.popleft()
                    entry[1] = True
                    entry[0].release()
                    return
            self.free += 1


class TaskSlots:
    """At most ``size`` requests in flight from the tasks of one event loop (not thread-safe:
    used from its loop only)."""

    __slots__ = ("first", "free", "normal")

    def __init__(self, size: int) -> None:
        self.free = size
        self.first: collections.deque[asyncio.Future[None]] = collections.deque()
        self.normal: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, budget: float | None, patient: bool) -> bool:
        """Take a slot; ``False`` if none came free within ``budget`` seconds."""
        if self.free > 0:
            self.free -= 1
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self.first if patient else self.normal
        queue.append(future)
        try:
            if budget is None:
                await future
            else:
                async with asyncio.timeout(budget):
                    await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return True  # granted as the time ran out: keep it
            _discard(queue, future)
            return False
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # granted as we were cancelled: pass the slot on
            else:
                _discard(queue, future)
            raise
        return True

    def release(self) -> None:
        """Give a slot back: to the first in line, or to the pool."""
        for queue in (self.first, self.normal):
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)
                    return
        self.free += 1


def _discard(queue: collections.deque[asyncio.Future[None]], future: asyncio.Future[None]) -> None:
    # A release may already have dropped it: it skips (and drops) futures that are done,
    # a cancelled one included.
    with contextlib.suppress(ValueError):
        queue.remove(future)


class Slots:
    """One store's connection queue: for threads, and for each event loop's tasks.

    ``not_sent(budget)`` makes the error of a request that waited ``budget`` seconds in vain.
    """

    __slots__ = ("_loops", "not_sent", "size", "threads")

    def __init__(self, size: int, not_sent: Callable[[float | None], NotSent]) -> None:
        self.size = size
        self.not_sent = not_sent
        self.threads = ThreadSlots(size)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TaskSlots] = weakref.WeakKeyDictionary()

    def enter(self) -> None:
        """Take a slot for this thread's request, or raise :class:`NotSent`."""
        budget = queue_budget()
        if not self.threads.acquire(budget, is_patient()):
            raise self.not_sent(budget)
        connection_taken()

    def leave(self) -> None:
        """Give this thread's slot back."""
        self.threads.release()

    def tasks(self) -> TaskSlots:
        """The running loop's slots (each loop has its own connections)."""
        loop = asyncio.get_running_loop()
        slots = self._loops.get(loop)
        if slots is None:
            slots = self._loops.setdefault(loop, TaskSlots(self.size))
        return slots

    async def aenter(self) -> TaskSlots:
        """Take a slot for this task's request, or raise :class:`NotSent`; returns the
        slots to give it back to (:meth:`TaskSlots.release`)."""
        slots = self.tasks()
        budget = queue_budget()
        if not await slots.acquire(budget, is_patient()):
            raise self.not_sent(budget)
        connection_taken()
        return slots
