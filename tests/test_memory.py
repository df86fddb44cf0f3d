"""What is specific to the in-process backend: FIFO hand-off, no threads, named stores."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import uuid

import pytest

import txlock
from conftest import LoopThread, aeventually, eventually
from test_conformance import Background, queued

pytestmark = pytest.mark.memory


@pytest.fixture
def mem() -> txlock.MemoryLockManager:
    return txlock.MemoryLockManager(f"mem-{uuid.uuid4().hex}")


def test_named_stores_are_isolated_and_shared_by_name(mem: txlock.MemoryLockManager) -> None:
    other = txlock.MemoryLockManager(mem.name + "-other")
    same = txlock.from_url(f"memory://{mem.name}")
    assert mem.acquire_lock("k", "a")
    assert same.is_lock_holder("k", "a")
    assert not other.is_locked("k")
    assert other.acquire_lock("k", "b", acquire_timeout=0)
    assert txlock.MemoryLockManager() == txlock.from_url("memory://")
    assert txlock.MemoryLockManager("x") != txlock.MemoryLockManager("y")


def test_ten_thousand_timed_holds_start_no_thread(mem: txlock.MemoryLockManager) -> None:
    before = threading.active_count()
    for i in range(10_000):
        assert mem.acquire_lock(f"k{i}", "h", hold_timeout=60)
    assert threading.active_count() == before
    assert len(mem.list_locks()) == 10_000
    assert all(info.expires_at is not None for info in mem.list_locks("k99"))


def test_waiters_are_served_in_arrival_order_threads_and_tasks_alike(
    mem: txlock.MemoryLockManager, loop_thread: LoopThread
) -> None:
    assert mem.acquire_lock("k", "owner")
    order: list[str] = []
    waiters = []
    for i in range(8):
        name = f"w{i}"
        if i % 2:
            coro_waiter = Background(lambda n=name: loop_thread.run(mem.aacquire_lock("k", n, acquire_timeout=30)))
            waiters.append(coro_waiter)
        else:
            waiters.append(Background(lambda n=name: mem.acquire_lock("k", n, acquire_timeout=30)))
        eventually(queued(mem, "k", i + 1), what=f"{name} to queue")
    holder = "owner"
    for _ in range(8):
        mem.release_lock("k", holder)
        eventually(lambda: mem.inspect("k") is not None, what="the hand-off")
        info = mem.inspect("k")
        assert info is not None
        holder = info.holder
        order.append(holder)
    mem.release_lock("k", holder)
    assert order == [f"w{i}" for i in range(8)]
    assert all(w.get() for w in waiters)


def test_a_newcomer_cannot_overtake_a_queued_waiter(mem: txlock.MemoryLockManager) -> None:
    assert mem.acquire_lock("k", "owner")
    waiter = Background(lambda: mem.acquire_lock("k", "waiter", acquire_timeout=30))
    eventually(queued(mem, "k", 1), what="the waiter to queue")
    mem.release_lock("k", "owner")
    # Released, but handed straight to the waiter: the newcomer finds it held.
    assert not mem.acquire_lock("k", "newcomer", acquire_timeout=0)
    assert waiter.get() is True
    assert mem.is_lock_holder("k", "waiter")


def test_an_expired_hold_goes_to_the_longest_waiter(mem: txlock.MemoryLockManager) -> None:
    clock = [100.0]
    mem._set_clock(lambda: clock[0])
    assert mem.acquire_lock("k", "owner", hold_timeout=5)
    first = Background(lambda: mem.acquire_lock("k", "first", acquire_timeout=30))
    eventually(queued(mem, "k", 1), what="first to queue")
    clock[0] += 5
    assert not mem.acquire_lock("k", "newcomer", acquire_timeout=0)
    assert first.get() is True
    assert mem.is_lock_holder("k", "first")


def test_injected_clock_drives_expiry(mem: txlock.MemoryLockManager) -> None:
    clock = [0.0]
    mem._set_clock(lambda: clock[0])
    assert mem.acquire_lock("k", "a", hold_timeout=10)
    clock[0] = 9.999
    assert mem.is_lock_holder("k", "a")
    clock[0] = 10.0
    assert not mem.is_locked("k")
    assert mem.acquire_lock("k", "b", acquire_timeout=0)


def test_async_waiters_park_no_threads(mem: txlock.MemoryLockManager) -> None:
    async def scenario() -> int:
        assert await mem.aacquire_lock("k", "owner")
        before = threading.active_count()
        tasks = [asyncio.ensure_future(mem.aacquire_lock("k", f"w{i}", acquire_timeout=30)) for i in range(200)]
        await aeventually(lambda: (info := mem.inspect("k")) is not None and info.waiters == 200,
                          what="200 tasks to queue")
        during = threading.active_count()
        await mem.arelease_lock("k", "owner")
        for i in range(200):
            assert await tasks[i]
            await mem.arelease_lock("k", f"w{i}")
        assert during == before
        return during

    asyncio.run(scenario())


def test_a_thousand_random_cancellations_leave_nothing_behind(mem: txlock.MemoryLockManager) -> None:
    rng = random.Random(1234)

    async def scenario() -> None:
        holders = 0
        for round_ in range(1000):
            owner = f"o{round_}"
            assert await mem.aacquire_lock("k", owner)
            tasks = [
                asyncio.ensure_future(mem.aacquire_lock("k", f"r{round_}w{i}", acquire_timeout=30)) for i in range(3)
            ]
            # A random number of turns of the loop before (and below, after) the release:
            # the cancellation lands at a random step of the acquires. Every outcome is
            # checked the same way: these yields vary the interleaving, they order nothing.
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            victim = tasks[rng.randrange(3)]
            if rng.random() < 0.5:
                await mem.arelease_lock("k", owner)
                owner = ""
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            victim.cancel()
            if owner:
                await mem.arelease_lock("k", owner)
            for i, task in enumerate(tasks):
                try:
                    got = await task
                except asyncio.CancelledError:
                    assert task is victim
                    continue
                assert got
                holders += 1
                await mem.arelease_lock("k", f"r{round_}w{i}")
            assert mem.inspect("k") is None, round_
            # No waiter or watcher left behind, not even an empty queue: only the store shows that.
            assert not mem._store.queues and not mem._store.watchers
        assert holders >= 1000

    asyncio.run(scenario())


def test_a_waiter_on_another_loop_is_woken_from_a_thread(mem: txlock.MemoryLockManager) -> None:
    assert mem.acquire_lock("k", "a")
    loops = [LoopThread(), LoopThread()]
    try:
        waiters = [Background(lambda lt=lt, i=i: lt.run(mem.aacquire_lock("k", f"loop{i}", acquire_timeout=30)))
                   for i, lt in enumerate(loops)]
        eventually(queued(mem, "k", 2), what="both loops to queue")
        mem.release_lock("k", "a")
        for _ in range(2):
            eventually(lambda: mem.inspect("k") is not None, what="the hand-off")
            info = mem.inspect("k")
            assert info is not None
            mem.release_lock("k", info.holder)
        assert all(w.get() for w in waiters)
    finally:
        for lt in loops:
            lt.close()


def test_raise_on_timeout_mode(mem: txlock.MemoryLockManager) -> None:
    strict = txlock.MemoryLockManager(mem.name, acquire_timeout=0.05, raise_on_timeout=True)
    assert mem.acquire_lock("k", "a")
    with pytest.raises(txlock.LockTimeout, match=r"could not acquire lock 'k' within 0\.05s"):
        strict.acquire_lock("k", "b")  # Prefect's call: no timeout passed
    with pytest.raises(txlock.LockTimeout):
        asyncio.run(strict.aacquire_lock("k", "b"))
    assert strict.is_lock_holder("k", "a")
    lenient = txlock.from_url(f"memory://{mem.name}?acquire_timeout=0.05")
    assert lenient.acquire_lock("k", "b") is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_has_its_own_copy_and_never_deadlocks(mem: txlock.MemoryLockManager) -> None:
    assert mem.acquire_lock("k", "parent")
    blocker = Background(lambda: mem.acquire_lock("k", "waiter", acquire_timeout=30))
    eventually(queued(mem, "k", 1), what="the waiter to queue")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = mem.is_lock_holder("k", "parent")
        mem.release_lock("k", "parent")  # hands to nobody: the waiter thread is not here
        ok = ok and mem.acquire_lock("k", "child", acquire_timeout=0)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert mem.is_lock_holder("k", "parent")  # the child changed only its copy
    mem.release_lock("k", "parent")
    assert blocker.get() is True
