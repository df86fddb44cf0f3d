"""Crowds on one key: more callers than a connection pool has connections.

A lock manager queues such callers; it never fails them as "server unavailable". redis-py
8.2 caps its pools at 100 connections by default, so 500 tasks that all try at once (or 64
threads, with the pool of the sync client) are more than a pool holds: every backend must
let them all through, one at a time, with no error and no overlap. The tests run on every
backend (the embedded ones face the same crowd).

Also here: creating a backend's clients emits no warning (redis-py 8.2 warns about a sync
``Retry`` given to an asyncio client and silently replaces its backoff).
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest

import txlock
from conftest import LoopThread, aeventually, need_module, url_for


class _Section:
    """A critical section that counts overlaps; ``value`` gains one per clean pass."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.inside = 0
        self.overlaps = 0
        self.value = 0

    def enter(self) -> int:
        with self.guard:
            self.inside += 1
            if self.inside != 1:
                self.overlaps += 1
            return self.value

    def leave(self, seen: int) -> None:
        with self.guard:
            self.value = seen + 1
            self.inside -= 1


def test_500_tasks_on_one_key(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    tasks = 500
    section = _Section()
    errors: list[BaseException] = []
    ready = [0]  # tasks at the start line

    async def work(index: int, start: asyncio.Event) -> None:
        ready[0] += 1
        await start.wait()  # every task tries at once: the burst a pool must absorb
        try:
            assert await manager.aacquire_lock("crowd", f"task{index}", acquire_timeout=120)
            try:
                seen = section.enter()
                await asyncio.sleep(0)  # the others run here: widens the window for an overlap
                section.leave(seen)
            finally:
                if index % 2:
                    manager.release_lock("crowd", f"task{index}")  # Prefect's sync release
                else:
                    await manager.arelease_lock("crowd", f"task{index}")
        except BaseException as exc:
            errors.append(exc)

    async def crowd() -> None:
        start = asyncio.Event()
        running = [asyncio.create_task(work(i, start)) for i in range(tasks)]
        await aeventually(lambda: ready[0] == tasks, what="every task at the start line")
        start.set()
        await asyncio.gather(*running)

    loop_thread.run(crowd(), timeout=240)
    assert not errors, f"{len(errors)} of {tasks} tasks failed; first: {errors[0]!r}"
    assert section.overlaps == 0
    assert section.value == tasks
    assert not manager.is_locked("crowd")


def test_64_threads_on_one_key(manager: txlock.BaseLockManager) -> None:
    threads, rounds = 64, 3
    section = _Section()
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(index: int) -> None:
        try:
            start.wait(60)
            for _ in range(rounds):
                assert manager.acquire_lock("crowd", f"t{index}", acquire_timeout=120)
                try:
                    seen = section.enter()
                    threading.Event().wait(0)  # let another thread run here if it can: widens the window
                    section.leave(seen)
                finally:
                    manager.release_lock("crowd", f"t{index}")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(240)
    assert not any(t.is_alive() for t in workers), "a thread is still waiting after 240 s"
    assert not errors, f"{len(errors)} of {threads} threads failed; first: {errors[0]!r}"
    assert section.overlaps == 0
    assert section.value == threads * rounds
    assert not manager.is_locked("crowd")


def test_200_threads_on_one_key_through_the_sync_pool(manager: txlock.BaseLockManager) -> None:
    """More threads than redis-py's default pool (100): each one tries once, at once."""
    threads = 200
    section = _Section()
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(index: int) -> None:
        try:
            start.wait(60)
            assert manager.acquire_lock("crowd", f"t{index}", acquire_timeout=120)
            try:
                seen = section.enter()
                section.leave(seen)
            finally:
                manager.release_lock("crowd", f"t{index}")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(240)
    assert not errors, f"{len(errors)} of {threads} threads failed; first: {errors[0]!r}"
    assert section.overlaps == 0
    assert section.value == threads


def _use_both_worlds(manager: txlock.BaseLockManager) -> None:
    assert manager.acquire_lock("w", "sync")
    manager.release_lock("w", "sync")

    async def both() -> None:
        assert await manager.aacquire_lock("w", "async")
        await manager.arelease_lock("w", "async")

    asyncio.run(both())  # a fresh event loop: a fresh async client
    asyncio.run(both())


def test_creating_clients_emits_no_warning(manager: txlock.BaseLockManager) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _use_both_worlds(manager)
    assert [str(w.message) for w in caught] == []


@pytest.mark.redis
def test_redis_clients_from_a_url_get_retry_of_their_own_world(request: pytest.FixtureRequest) -> None:
    need_module("redis", "redis")
    import redis.asyncio.retry
    import redis.retry

    from txlock.backends.redis import RedisLockManager

    manager = txlock.from_url(url_for("redis", request, request.getfixturevalue("tmp_path")))
    assert isinstance(manager, RedisLockManager)
    try:
        sync: Any = manager._new_sync()
        kwargs = sync.connection_pool.connection_kwargs
        assert isinstance(kwargs["retry"], redis.retry.Retry)
        sync.close()

        async def check() -> None:
            client: Any = manager._new_async()
            retry = client.connection_pool.connection_kwargs["retry"]
            assert isinstance(retry, redis.asyncio.retry.Retry)
            await client.aclose()

        asyncio.run(check())
    finally:
        manager.close()


@pytest.mark.redis
def test_redis_max_connections_option_bounds_the_pool_and_is_checked(request: pytest.FixtureRequest) -> None:
    need_module("redis", "redis")
    from txlock.backends.redis import RedisLockManager

    url = url_for("redis", request, request.getfixturevalue("tmp_path"))
    with pytest.raises(txlock.ConfigurationError, match="max_connections must be a whole number >= 1"):
        txlock.from_url(url + "&max_connections=0")
    manager = txlock.from_url(url + "&max_connections=2")
    assert isinstance(manager, RedisLockManager)
    try:
        section = _Section()
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                assert manager.acquire_lock("small", f"t{index}", acquire_timeout=60)
                seen = section.enter()
                section.leave(seen)
                manager.release_lock("small", f"t{index}")
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
        assert not errors, errors
        assert section.value == 16 and section.overlaps == 0
        assert manager._client().connection_pool.max_connections == 2
    finally:
        manager.close()


# ------------------------------------------------- no connection before the deadline


def _slots_of(manager: txlock.BaseLockManager) -> Any:
    """The connection queue (txlock._slots.Slots) of ``manager``."""
    from txlock.backends.postgres import PostgresLockManager
    from txlock.backends.redis import RedisLockManager

    if isinstance(manager, RedisLockManager):
        return manager._gate
    assert isinstance(manager, PostgresLockManager)
    return manager._store.connections.slots.queue


def _occupy_every_connection(manager: txlock.BaseLockManager) -> tuple[Any, int]:
    """Take every connection slot of ``manager``'s threads, as calls in flight would:
    returns the slots and how many were taken."""
    slots = _slots_of(manager)
    for _ in range(slots.size):
        assert slots.threads.acquire(30.0, False), "a connection slot stayed taken"
    return slots.threads, slots.size


@pytest.mark.parametrize(
    "backend", [pytest.param("redis", marks=pytest.mark.redis), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_timed_call_that_never_gets_a_connection_times_out_instead_of_failing(
    backend: str, request: pytest.FixtureRequest
) -> None:
    # Found by the fault lab (hostile load): a call that queued for a connection past its
    # deadline ended with BackendUnavailable although nothing was sent. It is a timeout.
    url = url_for(backend, request, request.getfixturevalue("tmp_path"))
    manager = txlock.from_url(url)
    try:
        manager.acquire_lock("warm", "w")  # a connection exists and the store is set up
        manager.release_lock("warm", "w")
        semaphore, size = _occupy_every_connection(manager)
        try:
            assert manager.acquire_lock("k", "a", acquire_timeout=0.05) is False
            assert manager.acquire_lease("k", "a", timeout=0) is None
            assert manager.wait_for_lock("k", timeout=0.05) is False
            with pytest.raises(txlock.LockTimeout), manager.lock("k", "a", timeout=0.05):
                pass
        finally:
            for _ in range(size):
                semaphore.release()
        # Nothing was sent, so nothing is held and the key is still free for anyone.
        assert manager.is_locked("k") is False
        assert manager.acquire_lock("k", "b", acquire_timeout=5)
        manager.release_lock("k", "b")
    finally:
        manager.close()


@pytest.mark.parametrize(
    "backend", [pytest.param("redis", marks=pytest.mark.redis), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_timed_task_that_never_gets_a_connection_times_out_instead_of_failing(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = url_for(backend, request, request.getfixturevalue("tmp_path"))
    manager = txlock.from_url(url)

    async def scenario() -> None:
        await manager.aacquire_lock("warm", "w")
        manager.release_lock("warm", "w")
        # Take every task slot of this loop, as calls in flight would hold them.
        if isinstance(manager, txlock.RedisLockManager):
            semaphore = manager._gate.tasks()
            size = manager._gate.size
        else:
            assert isinstance(manager, txlock.PostgresLockManager)
            semaphore = manager._store.async_connections.slots.queue.tasks()
            size = manager._store.async_connections.slots.queue.size
        for _ in range(size):
            assert await semaphore.acquire(30.0, False)
        try:
            assert await manager.aacquire_lock("k", "a", acquire_timeout=0.05) is False
            assert await manager.aacquire_lease("k", "a", timeout=0) is None
            assert await manager.await_for_lock("k", timeout=0.05) is False
        finally:
            for _ in range(size):
                semaphore.release()
        assert await manager.ais_locked("k") is False

    try:
        asyncio.run(scenario())
    finally:
        manager.close()
