"""Pins the public types: checked by mypy (``files`` in pyproject), never run by pytest."""

from __future__ import annotations

from typing import assert_type

import txlock


def sync_api(m: txlock.BaseLockManager) -> None:
    assert_type(m.acquire_lock("k", "h"), bool)
    assert_type(m.acquire_lock("k", "h", 1.0, 2.0), bool)
    assert_type(m.release_lock("k", "h"), None)
    assert_type(m.is_locked("k"), bool)
    assert_type(m.is_lock_holder("k", "h"), bool)
    assert_type(m.wait_for_lock("k", timeout=None), bool)
    assert_type(m.acquire_lease("k", "h", timeout=0, ttl=5), txlock.Lease | None)
    assert_type(m.inspect("k"), txlock.LockInfo | None)
    assert_type(m.list_locks(prefix="jobs:"), list[txlock.LockInfo])
    assert_type(m.force_release("k"), bool)
    with m.lock("k", ttl=30) as held:
        assert_type(held, txlock.LockContext)
        assert_type(held.lease, txlock.Lease)
        assert_type(held.token, int)
        assert_type(held.lost, bool)
    with m.lock_many(["a", "b"], "h", ttl=30) as both:
        assert_type(both, txlock.MultiLockContext)
        assert_type(both.lost, bool)
    lease = m.acquire_lease("k", "h")
    if lease is not None:
        assert_type(m.renew(lease), txlock.Lease)
        assert_type(lease.token, int)
        assert_type(lease.expires_at, float | None)


async def async_api(m: txlock.BaseLockManager) -> None:
    assert_type(await m.aacquire_lock("k", "h"), bool)
    assert_type(await m.arelease_lock("k", "h"), None)
    assert_type(await m.ais_locked("k"), bool)
    assert_type(await m.ais_lock_holder("k", "h"), bool)
    assert_type(await m.await_for_lock("k", 1.0), bool)
    assert_type(await m.aacquire_lease("k", "h"), txlock.Lease | None)
    assert_type(await m.ainspect("k"), txlock.LockInfo | None)
    assert_type(await m.alist_locks(), list[txlock.LockInfo])
    assert_type(await m.aforce_release("k"), bool)
    async with m.alock("k") as held:
        assert_type(held, txlock.LockContext)
    async with m.alock_many(["a", "b"], timeout=1.0) as both:
        assert_type(both, txlock.MultiLockContext)


def construction() -> None:
    assert_type(txlock.from_url("memory://"), txlock.BaseLockManager)
    assert_type(txlock.MemoryLockManager("x"), txlock.MemoryLockManager)
    assert_type(txlock.default_url(), str)
    error = txlock.LockTimeout("k", 1.0)
    assert_type(error.key, str)
    assert isinstance(error, TimeoutError)
