"""The waiting loop and its drivers, with a backend whose async I/O we can pause."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from conftest import aeventually
from txlock._flows import NEW_WAITER, Sleep, acquire_flow
from txlock._types import Lease
from txlock._waiter import ThreadWaiter
from txlock.backends.memory import MemoryLockManager

pytestmark = pytest.mark.memory


class SlowNetwork(MemoryLockManager):
    """The memory backend, but each async grant is done and then 'waits for the reply'
    until the test lets it go: a cancellation can land while a grant is in flight."""

    _async_io = True

    def __init__(self, name: str = "", **options: Any) -> None:
        super().__init__(name, **options)
        self.reply = asyncio.Event()
        self.in_flight = asyncio.Event()

    def _vacate(self, store: Any, key: str, now: float) -> Any:
        queue = store.queues.get(key)
        waiter = queue[0] if queue else None
        hold = super()._vacate(store, key, now)
        if waiter is not None:
            waiter.lease = None  # like a backend whose wake-up does not carry the grant: ask again
        return hold

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Any) -> Any:
        answer, _ = super()._try_acquire(key, holder, ttl, waiter)  # the server has done it...
        return answer, _as_sent  # ...and the answer travels through the transport

    def _exec(self, work: Any) -> Any:
        return work

    async def _aexec(self, work: Any) -> Any:
        if isinstance(work, Lease):
            self.in_flight.set()
            await self.reply.wait()  # the reply to a grant is on its way
        return work


def _as_sent(reply: Any) -> Any:
    return reply


def slow() -> SlowNetwork:
    return SlowNetwork(f"slow-{uuid.uuid4().hex}")


@pytest.mark.parametrize("queued_first", [False, True], ids=["first-attempt", "after-waiting"])
def test_a_grant_in_flight_when_cancelled_is_released(queued_first: bool) -> None:
    async def scenario() -> None:
        m = slow()
        if queued_first:
            m.reply.set()
            assert await m.aacquire_lock("k", "owner")
            task = asyncio.ensure_future(m.aacquire_lock("k", "w", acquire_timeout=30))
            await aeventually(lambda: (info := m.inspect("k")) is not None and info.waiters, what="w to queue")
            m.reply.clear()
            m.in_flight.clear()
            await m.arelease_lock("k", "owner")  # hands to w; w's retry is now in flight
        else:
            task = asyncio.ensure_future(m.aacquire_lock("k", "w", acquire_timeout=30))
        await m.in_flight.wait()
        assert m.is_lock_holder("k", "w")  # the grant landed on the "server"
        # The cancellation lands before the reply: cancel() cancels at once the future the
        # task awaits (nothing later undoes that), and the task's wake-up to handle it is
        # queued before the one the reply schedules.
        task.cancel()
        m.reply.set()  # the reply arrives after the cancellation
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not m.is_locked("k"), "a cancelled acquire leaked its grant"

    asyncio.run(scenario())


def test_a_cancelled_wait_for_lock_leaves_no_watcher() -> None:
    async def scenario() -> None:
        m = slow()
        m.reply.set()
        assert await m.aacquire_lock("k", "owner")
        task = asyncio.ensure_future(m.await_for_lock("k", 30))
        # A watcher shows nowhere in the public API (it is not a waiter): look in the store.
        await aeventually(lambda: m._store.watchers.get("k"), what="the watcher to register")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not m._store.watchers  # none left, not even an empty list
        assert m.is_lock_holder("k", "owner")

    asyncio.run(scenario())


def test_a_timed_out_waiter_handed_the_lock_as_it_gives_up_keeps_it() -> None:
    m = MemoryLockManager(f"late-{uuid.uuid4().hex}")
    clock = [0.0]
    m._set_clock(lambda: clock[0])
    assert m.acquire_lock("k", "owner")
    flow = acquire_flow(m, "k", "w", None, 0.05, None)
    step = flow.send(None)  # first attempt
    step = flow.send(m._call(step))
    assert step is NEW_WAITER
    step = flow.send(ThreadWaiter())  # registers
    step = flow.send(m._call(step))
    m.release_lock("k", "owner")  # hands the lock to the queued waiter...
    while isinstance(step, Sleep):  # ...while it sleeps out its timeout
        step = flow.send(False)
        if type(step) is tuple:
            step = flow.send(m._call(step))
    with pytest.raises(StopIteration) as done:
        while True:
            step = flow.send(m._call(step) if type(step) is tuple else None)
    lease = done.value.value
    assert isinstance(lease, Lease) and lease.holder == "w"
    assert m.is_lock_holder("k", "w")


def test_interrupting_a_blocked_sync_acquire_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    m = MemoryLockManager(f"intr-{uuid.uuid4().hex}")
    assert m.acquire_lock("k", "owner")

    class Boom(Exception):
        pass

    def explode(waiter: ThreadWaiter, timeout: float) -> bool:
        raise Boom  # as a KeyboardInterrupt would, mid-wait

    monkeypatch.setattr(ThreadWaiter, "wait", explode)
    with pytest.raises(Boom):
        m.acquire_lock("k", "w", acquire_timeout=30)
    monkeypatch.undo()
    info = m.inspect("k")
    assert info is not None and info.holder == "owner" and info.waiters == 0
    assert not m._store.queues  # not even an empty queue left behind (only the store shows that)
    m.release_lock("k", "owner")
    assert not m.is_locked("k")


def test_renewing_many_leases_uses_one_background_thread() -> None:
    import contextlib
    import threading

    from txlock import _scheduler

    m = MemoryLockManager(f"renew-{uuid.uuid4().hex}")
    before = {t.name for t in threading.enumerate()}
    jobs = _scheduler.job_count()
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(m.lock(f"k{i}", ttl=30)) for i in range(100)]
        assert _scheduler.job_count() >= 100
        started = [t for t in threading.enumerate() if t.name not in before]
        assert {t.name for t in started} <= {"txlock-heartbeat", "txlock-lease-watch"}
        assert all(not h.lost for h in held)
    assert m.list_locks() == []
    assert _scheduler.job_count() == jobs  # every renewal stopped with its block
