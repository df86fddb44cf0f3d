"""The calls of this process that wait, per channel: one table shared by the backends.

A *channel* is whatever a backend's wake-up signal names: a lock file, a SQLite bucket, a
Redis key's hash, a PostgreSQL notification channel. A backend registers a waiter on the
channels it waits for, with an *entry* of its own (what it needs to know about that waiter:
whether it acquires or only watches, its queue ticket, ...), and wakes the channel's
waiters when its signal arrives. Waiters of a channel keep their arrival order.

Thread-safe: signals arrive on listener threads while waiters register from any thread.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from txlock import _scheduler
from txlock._waiter import Waiter

__all__ = ["TIMER_RETRY", "HoldTimers", "WaiterTable", "first_acquirer_and_watchers"]

C = TypeVar("C", bound=Hashable)
E = TypeVar("E")


def first_acquirer_and_watchers(
    waiters: Iterable[tuple[Waiter, E]], acquires: Callable[[E], bool], watchers: int
) -> list[tuple[Waiter, E]]:
    """Of ``waiters`` (in arrival order), the first that acquires and the first ``watchers``
    that only watch: whom a freed key wakes. Stops as soon as both are found, without going
    through the other acquirers."""
    chosen: list[tuple[Waiter, E]] = []
    acquirer = False
    for waiter, entry in waiters:
        if acquires(entry):
            if acquirer:
                if not watchers:
                    break
                continue
            acquirer = True
        elif watchers:
            watchers -= 1
        else:
            continue
        chosen.append((waiter, entry))
        if acquirer and not watchers:
            break
    return chosen


class WaiterTable(Generic[C, E]):
    """Waiters by channel, in arrival order, each with its backend's entry."""

    __slots__ = ("channels", "mutex")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.channels: dict[C, dict[Waiter, E]] = {}

    def add(self, channel: C, waiter: Waiter, entry: E) -> bool:
        """Register ``waiter`` on ``channel``; ``False`` if it already was (it keeps its place)."""
        with self.mutex:
            waiters = self.channels.get(channel)
            if waiters is None:
                waiters = self.channels[channel] = {}
            elif waiter in waiters:
                return False
            waiters[waiter] = entry
            return True

    def discard(self, channel: C, waiter: Waiter) -> E | None:
        """Unregister ``waiter`` from ``channel``; its entry, or ``None`` if it was not there."""
        with self.mutex:
            waiters = self.channels.get(channel)
            if waiters is None:
                return None
            entry = waiters.pop(waiter, None)
            if not waiters:
                del self.channels[channel]
            return entry

    def entries(self, channel: C) -> list[tuple[Waiter, E]]:
        """The waiters of ``channel`` and their entries, in arrival order (a copy)."""
        with self.mutex:
            return list(self.channels.get(channel, {}).items())

    def count(self, channel: C, where: Callable[[E], bool] | None = None) -> int:
        """How many waiters ``channel`` has (whose entry satisfies ``where``)."""
        with self.mutex:
            waiters = self.channels.get(channel)
            if not waiters:
                return 0
            if where is None:
                return len(waiters)
            return sum(1 for entry in waiters.values() if where(entry))

    def alone(self, channel: C, waiter: Waiter) -> bool:
        """Whether ``waiter`` is the only waiter registered on ``channel``."""
        with self.mutex:
            waiters = self.channels.get(channel)
            return waiters is not None and len(waiters) == 1 and waiter in waiters

    def total(self) -> int:
        """How many registrations the table holds, over every channel."""
        with self.mutex:
            return sum(len(waiters) for waiters in self.channels.values())

    def wake(self, channel: C) -> None:
        """Wake every waiter of ``channel``."""
        if not self.channels:  # the common case on a release nobody waits for: no mutex
            return
        for waiter, _ in self.entries(channel):
            waiter.wake()

    def wake_first(self, channel: C, acquires: Callable[[E], bool]) -> None:
        """Wake the first waiter of ``channel`` whose entry ``acquires`` and every waiter
        whose entry does not (calls that only wait for the key to be free). One acquirer
        per release, not all: a release must not stampede every waiting thread."""
        if not self.channels:
            return
        chosen: list[Waiter] = []
        first = True
        for waiter, entry in self.entries(channel):
            if not acquires(entry):
                chosen.append(waiter)
            elif first:
                chosen.append(waiter)
                first = False
        for waiter in chosen:
            waiter.wake()

    def wake_all(self) -> None:
        """Wake every waiter of every channel (signals were lost: everyone looks again)."""
        with self.mutex:
            waiters = [waiter for channel in self.channels.values() for waiter in channel]
        for waiter in waiters:
            waiter.wake()

    def reset_after_fork(self) -> None:
        """In a child made by ``fork``: the waiting threads and loops do not exist there."""
        self.mutex = threading.Lock()
        self.channels = {}


#: When the waiter a key's timer woke did not look again (it was leaving), the timer wakes
#: the key's waiters again this much later.
TIMER_RETRY = 1.0


class _KeyTimer:
    """One key's timer: when the hold ends (``due``, monotonic), when its job runs next
    (``at``), and the job."""

    __slots__ = ("at", "due", "job")

    def __init__(self, due: float, at: float, job: _scheduler.Job) -> None:
        self.due = due
        self.at = at
        self.job = job


class HoldTimers(Generic[C]):
    """One timer per waiting key, however many calls of this process wait on it: when the
    hold a look found ends without a release (its time ran out: nothing is published), the
    key's waiters are woken to look again. The timers run on the lease-watch thread and do
    no I/O.

    ``mutex`` is the backend's own lock over its waiting state: :meth:`arm` and
    :meth:`cancel` are called with it held; the timer takes it to read ``wanted(key)``
    (does any call of this process still wait on ``key``?) and calls ``wake(key)`` after
    releasing it.
    """

    __slots__ = ("mutex", "name", "timers", "wake", "wanted")

    def __init__(self, mutex: threading.Lock, name: str, wanted: Callable[[C], bool],
                 wake: Callable[[C], object]) -> None:
        self.mutex = mutex
        self.name = name
        self.wanted = wanted
        self.wake = wake
        self.timers: dict[C, _KeyTimer] = {}

    def arm(self, key: C, seconds: float) -> None:
        """A look found ``key`` taken for ``seconds`` more: look again then, unless a release
        or a later look says otherwise (call with ``mutex`` held)."""
        due = time.monotonic() + seconds
        timer = self.timers.get(key)
        if timer is not None:
            if timer.at <= due:  # it runs first and then waits for the rest
                timer.due = due
                return
            timer.job.cancel()
        job = _scheduler.watch(functools.partial(self._expired, key), max(seconds, 0.0), name=self.name)
        self.timers[key] = _KeyTimer(due, due, job)

    def arm_earliest(self, key: C, seconds: float) -> None:
        """A waiter asks for a look at ``key`` within ``seconds``: arm the timer unless it
        already runs by then; of several such asks, the earliest wins (call with ``mutex``
        held)."""
        timer = self.timers.get(key)
        if timer is None or timer.due > time.monotonic() + seconds:
            self.arm(key, seconds)

    def cancel(self, key: C) -> None:
        """No call waits on ``key`` any more (call with ``mutex`` held)."""
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.job.cancel()

    def _expired(self, key: C) -> bool | float:
        with self.mutex:
            timer = self.timers.get(key)
            if timer is None:
                return False
            if not self.wanted(key):
                del self.timers[key]
                return False
            now = time.monotonic()
            if timer.due > now:  # a later look found the hold renewed
                timer.at = timer.due
                return timer.due - now
            timer.due = timer.at = now + TIMER_RETRY  # unless a look sets it anew
        self.wake(key)
        return TIMER_RETRY
