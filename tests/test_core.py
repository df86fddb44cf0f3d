"""The waiting loop and its drivers, with a backend whose async I/O we can pause."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import txlock
from txlock._types import Busy, Lease
from txlock._waiter import Waiter
from txlock.backends.memory import MemoryLockManager

pytestmark = pytest.mark.memory


class SlowNetwork(MemoryLockManager):
    """The memory backend, but each async attempt does its work and then 'waits for the
    reply' until the test lets it go: a cancellation can land while a grant is in flight."""

    _async_io = True

    def __init__(self, name: str = "", **options: Any) -> None:
        super().__init__(name, **options)
        self.reply = asyncio.Event()
        self.in_flight = asyncio.Event()

    async def _await(self, key: str, waiter: Any, timeout: float) -> bool:
        woken = await super()._await(key, waiter, timeout)
        waiter.lease = None  # like a backend whose wake-up does not carry the grant: ask again
        return woken

    async def _atry_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        result = self._try_acquire(key, holder, ttl, waiter)  # the server has done it...
        self.in_flight.set()
        await self.reply.wait()  # ...and the reply is on its way
        return result


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
            while (info := m.inspect("k")) is None or not info.waiters:
                await asyncio.sleep(0)
            m.reply.clear()
            m.in_flight.clear()
            await m.arelease_lock("k", "owner")  # hands to w; w's retry is now in flight
        else:
            task = asyncio.ensure_future(m.aacquire_lock("k", "w", acquire_timeout=30))
        await m.in_flight.wait()
        assert m.is_lock_holder("k", "w")  # the grant landed on the "server"
        task.cancel()
        await asyncio.sleep(0)
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
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not m._store.watchers
        assert m.is_lock_holder("k", "owner")

    asyncio.run(scenario())


def test_a_timed_out_waiter_handed_the_lock_as_it_gives_up_keeps_it() -> None:
    m = MemoryLockManager(f"late-{uuid.uuid4().hex}")
    clock = [0.0]
    m._set_clock(lambda: clock[0])
    assert m.acquire_lock("k", "owner")
    flow = m._acquire_flow("k", "w", None, 0.05, None)
    step = flow.send(None)  # first attempt
    step = flow.send(m._try_acquire(*step[2]))
    assert step[0] == 2  # asks for a waiter
    waiter = txlock._waiter.ThreadWaiter()
    step = flow.send(waiter)  # registers
    step = flow.send(m._try_acquire(*step[2]))
    m.release_lock("k", "owner")  # hands the lock to the queued waiter...
    while step[0] == 1:  # ...while it sleeps out its timeout
        step = flow.send(False)
        if step[0] == 0:
            step = flow.send(getattr(m, step[1])(*step[2]))
    with pytest.raises(StopIteration) as done:
        while True:
            step = flow.send(getattr(m, step[1])(*step[2]) if step[0] == 0 else None)
    lease = done.value.value
    assert isinstance(lease, Lease) and lease.holder == "w"
    assert m.is_lock_holder("k", "w")


def test_interrupting_a_blocked_sync_acquire_cleans_up() -> None:
    m = MemoryLockManager(f"intr-{uuid.uuid4().hex}")
    assert m.acquire_lock("k", "owner")

    class Boom(Exception):
        pass

    class Exploding(MemoryLockManager):
        def _wait(self, key: str, waiter: Any, timeout: float) -> bool:
            raise Boom  # as a KeyboardInterrupt would, mid-wait

    e = Exploding(m.name)
    with pytest.raises(Boom):
        e.acquire_lock("k", "w", acquire_timeout=30)
    assert not m._store.queues
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
        assert [t.name for t in started] in ([], ["txlock-heartbeat"])
        assert all(not h.lost for h in held)
    assert m.list_locks() == []
    assert _scheduler.job_count() == jobs  # every renewal stopped with its block
