"""Two background threads per process: one runs periodic jobs (lease renewals,
heartbeats), the other watches lease deadlines.

The contract forbids a thread or timer per lock: every renewal of every ``lock()`` block
and every backend heartbeat of a process shares the single ``txlock-heartbeat`` daemon
thread, started on first use. Its jobs do I/O, and a renewal sent into a network partition
can hang there until its deadline; so the deadlines by which a ``lock()`` block must
consider its hold lost are kept by a second thread, ``txlock-lease-watch``, whose jobs never
do I/O (:func:`watch`). After ``fork()`` the child starts with no jobs: it must never renew, and so
keep alive, the holds of its parent.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable

__all__ = ["Job", "schedule", "watch"]

class Job:
    """A periodic job. ``fn()`` runs every ``interval`` seconds until it returns ``False``
    or the job is cancelled; a ``float`` it returns is the delay before its next run."""

    __slots__ = ("cancelled", "fn", "interval", "name")

    def __init__(self, fn: Callable[[], bool | float | None], interval: float, name: str) -> None:
        self.fn = fn
        self.interval = interval
        self.name = name
        self.cancelled = False

    def cancel(self) -> None:
        """Stop running the job; a run in progress finishes."""
        self.cancelled = True


class _Scheduler:
    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, job: Job, first_delay: float) -> None:
        entry = (time.monotonic() + first_delay, next(self._seq), job)
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
                self._thread.start()
            if self._heap[0] is entry:
                # Only a job due before every other one changes when the thread must wake:
                # the PostgreSQL deadline guards, one per statement, mostly do not.
                self._cond.notify()

    def jobs(self) -> int:
        with self._cond:
            return sum(1 for _, _, job in self._heap if not job.cancelled)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    due = self._heap[0][0] - time.monotonic()
                    if due <= 0:
                        _, _, job = heapq.heappop(self._heap)
                        break
                    self._cond.wait(due)
            try:
                outcome = job.fn()
                again = outcome is not False
                delay = outcome if type(outcome) is float else job.interval
            except Exception:  # a job must never kill the thread that serves every other job
                import logging

                logging.getLogger("txlock.scheduler").exception(
                    "background job %s failed; retrying in %.3gs", job.name, job.interval
                )
                again, delay = True, job.interval
            if again and not job.cancelled:
                with self._cond:
                    heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), job))


_scheduler = _Scheduler("txlock-heartbeat")
_watcher = _Scheduler("txlock-lease-watch")


def _reset_after_fork() -> None:
    global _scheduler, _watcher
    _scheduler = _Scheduler("txlock-heartbeat")
    _watcher = _Scheduler("txlock-lease-watch")


os.register_at_fork(after_in_child=_reset_after_fork)


def schedule(
    fn: Callable[[], bool | float | None], interval: float, *, name: str, first_delay: float | None = None
) -> Job:
    """Run ``fn`` every ``interval`` seconds on the shared background thread."""
    job = Job(fn, interval, name)
    _scheduler.add(job, interval if first_delay is None else first_delay)
    return job


def watch(fn: Callable[[], bool | float | None], first_delay: float, *, name: str) -> Job:
    """Run ``fn`` after ``first_delay`` seconds on the lease-watch thread, then again after
    each delay it returns, until it returns ``False`` or is cancelled. ``fn`` must not do
    I/O: this thread keeps deadlines while the other one may be stuck in a renewal."""
    job = Job(fn, first_delay, name)
    _watcher.add(job, first_delay)
    return job


def job_count() -> int:
    """How many jobs are scheduled in this process (for tests and introspection)."""
    return _scheduler.jobs() + _watcher.jobs()
