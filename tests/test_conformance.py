"""The contract of DESIGN.md section 1, checked on every backend, in both worlds.

Each test takes ``api`` (the sync methods, or the async ones run as tasks on an event loop)
and ``manager`` from ``conftest.py``; a backend joins by adding one parameter there.
"""

from __future__ import annotations

import asyncio
import copy
import inspect as pyinspect
import math
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import cloudpickle
import pytest

import txlock
from conftest import Api, LoopThread, aeventually, eventually

# ---------------------------------------------------------------- helpers




class Background:
    """Run ``fn`` in a thread and collect its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # pragma: no cover - reported by get()
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def get(self, timeout: float = 30) -> Any:
        assert self.done.wait(timeout), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def queued(manager: txlock.BaseLockManager, key: str, count: int) -> Callable[[], bool]:
    """A predicate: ``count`` waiters are queued on ``key`` (backends that count them)."""

    def check() -> bool:
        info = manager.inspect(key)
        return info is not None and info.waiters is not None and info.waiters >= count

    return check


# ---------------------------------------------------------------- acquire / release


def test_acquire_free_key_then_others_are_refused(api: Api) -> None:
    assert not api.is_locked("k")
    assert api.acquire_lock("k", "a")
    assert api.is_locked("k")
    assert api.is_lock_holder("k", "a")
    assert not api.is_lock_holder("k", "b")
    assert not api.acquire_lock("k", "b", acquire_timeout=0)
    assert api.is_lock_holder("k", "a")


def test_same_holder_reacquires_at_once_and_resets_expiry(api: Api) -> None:
    first = api.acquire_lease("k", "a", ttl=60)
    assert first is not None
    assert first.expires_at is not None
    assert api.acquire_lock("k", "a", acquire_timeout=0)  # idempotent retry, no wait
    info = api.inspect("k")
    assert info is not None
    assert info.holder == "a"
    assert info.token == first.token  # the same grant
    assert info.expires_at is None  # this call asked for no hold timeout
    again = api.acquire_lease("k", "a", timeout=0, ttl=30)
    assert again is not None
    assert again.token == first.token
    assert again.expires_at is not None
    assert again.expires_at < first.expires_at


def test_release_frees_the_key(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    api.release_lock("k", "a")
    assert not api.is_locked("k")
    assert api.acquire_lock("k", "b", acquire_timeout=0)


def test_release_of_an_unheld_key_is_a_noop(api: Api) -> None:
    api.release_lock("never-held", "a")
    assert not api.is_locked("never-held")
    assert api.acquire_lock("k", "a")
    api.release_lock("k", "a")
    api.release_lock("k", "a")  # twice: Prefect does this on an eager nested commit
    assert not api.is_locked("k")


def test_release_by_another_holder_raises_prefects_error(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    with pytest.raises(ValueError, match=r"^No lock held by b for transaction with key k$") as caught:
        api.release_lock("k", "b")
    assert isinstance(caught.value, txlock.NotLockHolder)
    assert caught.value.actual_holder in (None, "a")
    assert api.is_lock_holder("k", "a")  # nothing changed


def test_acquire_timeout_zero_is_one_attempt(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    assert api.acquire_lease("k", "b", timeout=0) is None
    assert not api.acquire_lock("k", "b", acquire_timeout=0)
    assert api.is_lock_holder("k", "a")


def test_acquire_timeout_gives_up_and_returns_false(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    start = time.monotonic()
    assert not api.acquire_lock("k", "b", acquire_timeout=0.2)
    assert time.monotonic() - start >= 0.19  # it did wait its time out
    assert api.is_lock_holder("k", "a")
    api.release_lock("k", "a")
    assert api.acquire_lock("k", "b", acquire_timeout=0)  # the timed-out waiter left no trace


def parked(manager: txlock.BaseLockManager, key: str, count: int) -> Callable[[], bool]:
    """A predicate: ``count`` waiters wait on ``key``, seen in the store or in this process.

    Every backend can tell one way or the other, so a test that waits on it knows that its
    waiter really waits (a hand-off path that is never taken fails the test). The public
    count (``LockInfo.waiters``) where the store keeps one; else the test hook that counts
    the waiters parked in this process.
    """
    if manager.capabilities.counts_waiters:
        return queued(manager, key, count)
    assert manager._parked_here(key) is not None, f"{type(manager).__name__} cannot show a parked waiter"
    return lambda: manager._parked_here(key) == count


def test_release_hands_the_lock_to_a_waiter(api: Api, manager: txlock.BaseLockManager) -> None:
    assert api.acquire_lock("k", "a")
    waiter = Background(lambda: api.acquire_lock("k", "b", acquire_timeout=30))
    eventually(parked(manager, "k", 1), what="the waiter to wait")
    assert not waiter.done.is_set()
    api.release_lock("k", "a")
    assert waiter.get() is True
    assert api.is_lock_holder("k", "b")


def test_acquire_without_timeout_waits_until_free(api: Api, manager: txlock.BaseLockManager) -> None:
    assert api.acquire_lock("k", "a")
    waiter = Background(lambda: api.acquire_lock("k", "b"))
    eventually(parked(manager, "k", 1), what="the waiter to wait")
    assert not waiter.done.is_set()
    api.release_lock("k", "a")
    assert waiter.get() is True


# ---------------------------------------------------------------- wait_for_lock


def test_wait_for_lock_on_a_free_key_returns_true_without_taking_it(api: Api) -> None:
    assert api.wait_for_lock("k")
    assert api.wait_for_lock("k", timeout=0)
    assert not api.is_locked("k")


def test_wait_for_lock_times_out_on_a_held_key(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    assert not api.wait_for_lock("k", timeout=0)
    start = time.monotonic()
    assert not api.wait_for_lock("k", timeout=0.1)
    assert time.monotonic() - start >= 0.09
    assert api.is_lock_holder("k", "a")


def test_wait_for_lock_returns_when_released_and_never_takes_the_lock(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    watcher = Background(lambda: api.wait_for_lock("k", timeout=30))
    api.release_lock("k", "a")
    assert watcher.get() is True
    assert not api.is_locked("k")
    assert api.acquire_lock("k", "c", acquire_timeout=0)


def test_wait_for_lock_returns_when_a_timed_hold_expires(api: Api) -> None:
    assert api.acquire_lock("k", "a", hold_timeout=0.2)
    assert api.wait_for_lock("k", timeout=30)
    assert not api.is_locked("k")


# ---------------------------------------------------------------- hold timeouts


def test_hold_timeout_ends_the_hold(api: Api) -> None:
    lease = api.acquire_lease("k", "a", ttl=0.2)
    assert lease is not None
    assert lease.ttl == pytest.approx(0.2)
    assert api.acquire_lock("k", "b", acquire_timeout=30)  # waits for the expiry
    assert api.is_lock_holder("k", "b")


def test_an_expired_holder_can_no_longer_release_renew_or_see_itself(api: Api) -> None:
    lease = api.acquire_lease("k", "a", ttl=0.2)
    assert lease is not None
    assert api.acquire_lock("k", "b", acquire_timeout=30)
    assert not api.is_lock_holder("k", "a")
    with pytest.raises(ValueError, match="No lock held by a for transaction with key k"):
        api.release_lock("k", "a")
    with pytest.raises(txlock.LockLost):
        api.renew(lease)
    assert api.is_lock_holder("k", "b")


def test_an_expired_hold_reads_as_free_and_release_is_a_noop(api: Api) -> None:
    assert api.acquire_lock("k", "a", hold_timeout=0.2)
    assert api.wait_for_lock("k", timeout=30)
    assert not api.is_locked("k")
    assert not api.is_lock_holder("k", "a")
    api.release_lock("k", "a")  # no-op, no error
    assert api.inspect("k") is None


def test_renew_extends_a_live_lease(api: Api) -> None:
    lease = api.acquire_lease("k", "a", ttl=5)
    assert lease is not None and lease.expires_at is not None
    renewed = api.renew(lease, 60)
    assert renewed.token == lease.token
    assert renewed.expires_at is not None
    assert renewed.expires_at > lease.expires_at + 30
    assert api.is_lock_holder("k", "a")


# ---------------------------------------------------------------- keys and holders


HOSTILE_KEYS = [
    "v1.2",
    "v1.3",
    "a/b",
    "a_b",
    "a\\b",
    "../x",
    "x",
    "./x",
    "/x",
    "",
    " ",
    ".",
    "..",
    "\0",
    "a\0b",
    "a\0c",
    "k" * 1000,
    "k" * 999,
    "ключ",
    "🔒",
    "e\u0301",
    "\u00e9",
    "\ud800",
    "\udfff",
    "{tag}x",
    "{tag}y",
    "*",
    "?",
    "%",
    "_",
    "'; DROP TABLE locks; --",
    "KEY",
    "key",
    "a:b",
    "a::b",
]


def test_distinct_keys_never_share_a_lock(api: Api) -> None:
    assert len(set(HOSTILE_KEYS)) == len(HOSTILE_KEYS)
    for index, key in enumerate(HOSTILE_KEYS):
        assert api.acquire_lock(key, f"h{index}", acquire_timeout=0), key
    for index, key in enumerate(HOSTILE_KEYS):
        assert api.is_lock_holder(key, f"h{index}"), key
        info = api.inspect(key)
        assert info is not None and info.key == key and info.holder == f"h{index}"
    listed = {info.key: info.holder for info in api.list_locks()}
    assert listed == {key: f"h{index}" for index, key in enumerate(HOSTILE_KEYS)}
    for index, key in enumerate(HOSTILE_KEYS):
        api.release_lock(key, f"h{index}")
    assert api.list_locks() == []


def test_holders_are_opaque_strings(api: Api) -> None:
    for holder in ["", "\0", "🔒", "\ud800", "a" * 1000, "'; --"]:
        assert api.acquire_lock("k", holder, acquire_timeout=0)
        assert api.is_lock_holder("k", holder)
        assert not api.is_lock_holder("k", holder + "x")
        api.release_lock("k", holder)
        assert not api.is_locked("k")


def calls_with(api: Api, key: Any, holder: Any) -> list[Callable[[], object]]:
    """Every call that takes a key or a holder, each with one of them replaced."""
    return [
        lambda: api.acquire_lock(key, "h", acquire_timeout=0),
        lambda: api.acquire_lock("k", holder, acquire_timeout=0),
        lambda: api.acquire_lease(key, "h", 0),
        lambda: api.release_lock(key, "h"),
        lambda: api.release_lock("k", holder),
        lambda: api.is_locked(key),
        lambda: api.is_lock_holder(key, "h"),
        lambda: api.is_lock_holder("k", holder),
        lambda: api.wait_for_lock(key, timeout=0),
        lambda: api.inspect(key),
    ]


def test_keys_and_holders_at_the_limit_work_and_one_more_character_is_refused(api: Api) -> None:
    key_limit, holder_limit = api.m.max_key_length, api.m.max_holder_length
    assert key_limit >= 1024 and holder_limit >= 1024
    # Four-byte characters: the limit counts characters, and the medium must hold them all.
    longest, holder = "🔒" * (key_limit - 1) + "k", "h" * holder_limit
    assert api.acquire_lock(longest, holder, acquire_timeout=0)
    assert api.is_locked(longest) and api.is_lock_holder(longest, holder)
    assert not api.acquire_lock(longest, "other", acquire_timeout=0)  # a lock, not two
    info = api.inspect(longest)
    assert info is not None and info.key == longest and info.holder == holder
    assert [i.key for i in api.list_locks()] == [longest]
    api.release_lock(longest, holder)
    assert not api.is_locked(longest)

    too_long, long_holder = "k" * (key_limit + 1), "h" * (holder_limit + 1)
    for call in calls_with(api, too_long, long_holder):
        with pytest.raises(ValueError, match=r"at most \d+ characters"):
            call()
    with pytest.raises(ValueError, match="max_key_length"):
        api.m.lock(too_long)
    assert api.list_locks() == []  # nothing was written


BAD_TYPES: list[Any] = [None, 1, b"k", ["k"], 1.5]


@pytest.mark.parametrize("bad", BAD_TYPES, ids=repr)
def test_non_str_keys_and_holders_raise_type_error(api: Api, bad: Any) -> None:
    for call in calls_with(api, bad, bad):
        with pytest.raises(TypeError):
            call()
    assert api.list_locks() == []


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_negative_or_nan_timeouts_raise_value_error(api: Api, bad: float) -> None:
    with pytest.raises(ValueError, match="acquire_timeout"):
        api.acquire_lock("k", "h", acquire_timeout=bad)
    with pytest.raises(ValueError, match="hold_timeout"):
        api.acquire_lock("k", "h", hold_timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        api.wait_for_lock("k", timeout=bad)
    assert not api.is_locked("k")  # nothing happened


@pytest.mark.parametrize("bad", ["1", True, [1]])
def test_non_numeric_timeouts_raise_type_error(api: Api, bad: Any) -> None:
    with pytest.raises(TypeError, match="acquire_timeout"):
        api.acquire_lock("k", "h", acquire_timeout=bad)
    with pytest.raises(TypeError, match="hold_timeout"):
        api.acquire_lock("k", "h", hold_timeout=bad)
    assert not api.is_locked("k")


def test_a_zero_or_infinite_hold_timeout_is_refused(api: Api) -> None:
    for bad in (0, math.inf):
        with pytest.raises(ValueError, match="hold_timeout"):
            api.acquire_lock("k", "h", hold_timeout=bad)
    assert not api.is_locked("k")


def test_an_infinite_acquire_timeout_waits_forever(api: Api) -> None:
    assert api.acquire_lock("k", "a", acquire_timeout=math.inf)
    waiter = Background(lambda: api.acquire_lock("k", "b", acquire_timeout=math.inf))
    api.release_lock("k", "a")
    assert waiter.get() is True


# ---------------------------------------------------------------- fencing tokens


def test_fencing_tokens_strictly_increase_per_key(api: Api) -> None:
    tokens = []
    for round_ in range(6):
        holder = f"h{round_ % 3}"
        lease = api.acquire_lease("k", holder, timeout=0, ttl=None if round_ % 2 else 30)
        assert lease is not None
        tokens.append(lease.token)
        assert api.inspect("k") is not None
        api.release_lock("k", holder)
    assert all(isinstance(t, int) for t in tokens)
    assert tokens == sorted(set(tokens)), tokens


def test_a_token_is_never_reused_after_expiry(api: Api) -> None:
    first = api.acquire_lease("k", "a", ttl=0.2)
    assert first is not None
    second = api.acquire_lease("k", "b", timeout=30)
    assert second is not None
    assert second.token > first.token


# ---------------------------------------------------------------- introspection


def test_inspect_describes_the_hold(api: Api) -> None:
    assert api.inspect("k") is None
    before = time.time()
    lease = api.acquire_lease("k", "a", ttl=30)
    assert lease is not None
    info = api.inspect("k")
    assert info is not None
    assert (info.key, info.holder, info.token) == ("k", "a", lease.token)
    assert before - 2 <= info.acquired_at <= time.time() + 2
    assert info.expires_at is not None
    assert before + 25 <= info.expires_at <= time.time() + 35
    api.release_lock("k", "a")
    assert api.inspect("k") is None


def test_list_locks_filters_by_prefix(api: Api) -> None:
    for key in ["jobs:1", "jobs:2", "jobs2", "other"]:
        assert api.acquire_lock(key, "h", acquire_timeout=0)
    assert [i.key for i in api.list_locks()] == ["jobs2", "jobs:1", "jobs:2", "other"]
    assert [i.key for i in api.list_locks("jobs:")] == ["jobs:1", "jobs:2"]
    assert [i.key for i in api.list_locks("jobs")] == ["jobs2", "jobs:1", "jobs:2"]
    assert api.list_locks("nothing") == []
    assert api.list_locks("") == api.list_locks()


def test_list_locks_omits_expired_holds(api: Api) -> None:
    assert api.acquire_lock("short", "h", hold_timeout=0.2)
    assert api.acquire_lock("long", "h", hold_timeout=60)
    assert api.wait_for_lock("short", timeout=30)
    assert [i.key for i in api.list_locks()] == ["long"]


def test_force_release_frees_a_held_key(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    assert api.force_release("k") is True
    assert not api.is_locked("k")
    assert api.force_release("k") is False
    assert api.acquire_lock("k", "b", acquire_timeout=0)
    lease = api.inspect("k")
    assert lease is not None and lease.holder == "b"


def test_force_release_wakes_waiters(api: Api) -> None:
    assert api.acquire_lock("k", "a")
    waiter = Background(lambda: api.acquire_lock("k", "b", acquire_timeout=30))
    assert api.force_release("k")
    assert waiter.get() is True


# ---------------------------------------------------------------- the async/sync mix Prefect uses


def test_async_acquire_then_sync_release_on_the_loop_thread(
    manager: txlock.BaseLockManager, loop_thread: LoopThread
) -> None:
    async def transaction() -> bool:
        assert await manager.aacquire_lock("k", "txn")
        assert await manager.ais_lock_holder("k", "txn")
        manager.release_lock("k", "txn")  # what Prefect's AsyncTransaction does
        return await manager.ais_locked("k")

    assert loop_thread.run(transaction()) is False
    assert not manager.is_locked("k")


def test_sync_acquire_then_async_release(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    assert manager.acquire_lock("k", "a")
    loop_thread.run(manager.arelease_lock("k", "a"))
    assert not manager.is_locked("k")


def test_async_and_thread_waiters_share_one_queue(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    assert manager.acquire_lock("k", "a")
    thread_waiter = Background(lambda: manager.acquire_lock("k", "t", acquire_timeout=30))
    task_waiter = Background(lambda: loop_thread.run(manager.aacquire_lock("k", "task", acquire_timeout=30)))
    eventually(parked(manager, "k", 2), what="both waiters to wait")
    manager.release_lock("k", "a")
    got: list[str] = []

    def pass_it_on() -> bool:
        """Release the lock as soon as each waiter holds it; true once both have."""
        info = manager.inspect("k")
        if info is not None and info.holder not in got:
            got.append(info.holder)
            manager.release_lock("k", info.holder)
        return len(got) == 2

    eventually(pass_it_on, timeout=30, what="both waiters to get the lock")
    assert sorted(got) == ["t", "task"]
    assert thread_waiter.get() and task_waiter.get()


def test_cancelled_async_acquires_leave_nothing_behind(
    manager: txlock.BaseLockManager, loop_thread: LoopThread
) -> None:
    async def scenario() -> None:
        assert await manager.aacquire_lock("k", "owner")
        for round_ in range(40):
            task = asyncio.ensure_future(manager.aacquire_lock("k", f"w{round_}", acquire_timeout=30))
            # 0 to 4 turns of the loop: the cancellation lands at a different step of the
            # acquire each round. Any outcome is checked the same way: these yields vary the
            # interleaving, they order nothing the test relies on.
            for _ in range(round_ % 5):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Cancel a waiter right as the lock is handed to it: once it waits, release, cancel.
        waiter = asyncio.ensure_future(manager.aacquire_lock("k", "late", acquire_timeout=30))
        await aeventually(parked(manager, "k", 1), what="the waiter to wait")
        await manager.arelease_lock("k", "owner")
        waiter.cancel()
        try:
            got = await waiter
        except asyncio.CancelledError:
            got = False
        if got:  # the grant won the race: the caller owns it and releases it
            await manager.arelease_lock("k", "late")
        assert not await manager.ais_locked("k")
        assert await manager.aacquire_lock("k", "next", acquire_timeout=5)
        await manager.arelease_lock("k", "next")

    loop_thread.run(scenario())
    assert manager.list_locks() == []


def test_acquire_timeout_inside_asyncio_timeout_does_not_leak(
    manager: txlock.BaseLockManager, loop_thread: LoopThread
) -> None:
    async def scenario() -> None:
        assert await manager.aacquire_lock("k", "owner")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await manager.aacquire_lock("k", "waiter")
        await manager.arelease_lock("k", "owner")
        assert not await manager.ais_locked("k")

    loop_thread.run(scenario())


# ---------------------------------------------------------------- the rich API: lock() / alock()


def test_lock_context_holds_and_releases(manager: txlock.BaseLockManager) -> None:
    with manager.lock("k", "a") as held:
        assert manager.is_lock_holder("k", "a")
        assert held.lease.key == "k" and held.token == held.lease.token
    assert not manager.is_locked("k")


def test_lock_context_raises_instead_of_running_unlocked(manager: txlock.BaseLockManager) -> None:
    assert manager.acquire_lock("k", "a")
    ran = False
    with pytest.raises(txlock.LockTimeout, match="could not acquire lock 'k'") as caught, manager.lock("k", timeout=0):
        ran = True
    assert not ran
    assert isinstance(caught.value, TimeoutError)
    assert manager.is_lock_holder("k", "a")


def test_lock_context_default_holder_is_unique(manager: txlock.BaseLockManager) -> None:
    with manager.lock("a") as one, manager.lock("b") as two:
        assert one.holder != two.holder
        assert manager.is_lock_holder("a", one.holder)


def test_alock_holds_and_releases(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    async def scenario() -> None:
        async with manager.alock("k", "a", ttl=30) as held:
            assert await manager.ais_lock_holder("k", "a")
            assert held.lease.ttl == 30
        assert not await manager.ais_locked("k")
        assert await manager.aacquire_lock("k", "other")
        with pytest.raises(txlock.LockTimeout):
            async with manager.alock("k", timeout=0):
                pytest.fail("the body must not run")

    loop_thread.run(scenario())


def test_lock_context_renews_in_the_background(manager: txlock.BaseLockManager) -> None:
    with manager.lock("k", "a", ttl=0.6) as held:
        first = held.lease.expires_at
        assert first is not None
        # Two renewals (every ttl/3) later, the hold outlived its first expiry.
        eventually(lambda: (held.lease.expires_at or 0) > first + 0.3, what="two renewals")
        eventually(lambda: time.time() > first + 0.1, what="the first expiry to pass")
        assert manager.is_lock_holder("k", "a")
        assert not held.lost
    assert not manager.is_locked("k")


def test_lock_context_reports_a_lost_lock(manager: txlock.BaseLockManager) -> None:
    lost: list[txlock.Lease] = []
    with pytest.raises(txlock.LockLost, match="'k'"), manager.lock("k", "a", ttl=0.6, on_lost=lost.append) as held:
        assert manager.force_release("k")
        assert manager.acquire_lock("k", "thief")
        eventually(lambda: held.lost, what="the renewer to notice")
        eventually(lambda: bool(lost), what="the on_lost callback")
        with pytest.raises(txlock.LockLost):
            held.check()
    assert lost[0].key == "k" and lost[0].holder == "a"
    assert manager.is_lock_holder("k", "thief")  # the exit did not release someone else's hold


def test_lock_context_without_ttl_notices_a_lost_lock_at_exit(manager: txlock.BaseLockManager) -> None:
    with pytest.raises(txlock.LockLost), manager.lock("k", "a"):
        manager.force_release("k")
        manager.acquire_lock("k", "b")
    assert manager.is_lock_holder("k", "b")


def test_an_error_in_the_body_wins_over_a_lost_lock(manager: txlock.BaseLockManager) -> None:
    with pytest.raises(KeyError), manager.lock("k", "a"):
        manager.force_release("k")
        raise KeyError("body")
    assert not manager.is_locked("k")


def test_nested_blocks_of_one_holder_keep_the_outer_block_protected(manager: txlock.BaseLockManager) -> None:
    with manager.lock("r", "me", ttl=30) as outer:
        assert not outer.nested
        with manager.lock("r", "me", timeout=0) as inner:  # no wait: it is already held
            assert inner.nested and inner.token == outer.token
            with manager.lock("r", "me", timeout=0) as innermost:
                assert innermost.token == outer.token
            assert manager.is_lock_holder("r", "me")
        # The inner exits released nothing: the outer body is still protected.
        assert manager.is_lock_holder("r", "me") and not outer.lost
        assert not manager.acquire_lock("r", "other", acquire_timeout=0)
        with pytest.raises(KeyError), manager.lock("r", "me"):
            raise KeyError("an error in a nested body")
        assert manager.is_lock_holder("r", "me")
        outer.check()
        assert "held, token" in repr(outer)
    assert not manager.is_locked("r")
    assert manager.acquire_lock("r", "other", acquire_timeout=0)
    manager.release_lock("r", "other")
    # Another holder, nested, is another lock: it waits (here: times out) as always.
    with manager.lock("r", "me"), pytest.raises(txlock.LockTimeout), manager.lock("r", "you", timeout=0):
        pytest.fail("the body must not run")


def test_a_lost_hold_is_lost_for_every_nested_block(manager: txlock.BaseLockManager) -> None:
    seen: list[str] = []
    outer_block = manager.lock("r", "me", ttl=0.6, on_lost=lambda _: seen.append("outer"))
    with pytest.raises(txlock.LockLost), outer_block as outer:
        with pytest.raises(txlock.LockLost), manager.lock("r", "me", on_lost=lambda _: seen.append("inner")) as inner:
            assert manager.force_release("r")
            assert manager.acquire_lock("r", "thief")
            eventually(lambda: inner.lost and outer.lost, what="the renewer to notice")
        # A new block of the same holder does not join the lost hold: it must wait.
        with pytest.raises(txlock.LockTimeout), manager.lock("r", "me", timeout=0):
            pytest.fail("the body must not run")
    assert sorted(seen) == ["inner", "outer"]
    assert manager.is_lock_holder("r", "thief")


def test_blocks_of_one_holder_in_two_threads_release_when_the_last_exits(manager: txlock.BaseLockManager) -> None:
    entered, first_left, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        entered.wait(10)
        with manager.lock("r", "me", timeout=10) as block:
            seen.append(block.nested)
            done.set()
            first_left.wait(10)
            seen.append(manager.is_lock_holder("r", "me"))

    thread = threading.Thread(target=second)
    thread.start()
    with manager.lock("r", "me"):
        entered.set()
        assert done.wait(10)
    first_left.set()
    thread.join(10)
    assert seen == [True, True]  # joined the hold; still held after the first block left
    assert not manager.is_locked("r")


def test_nested_alock_blocks_and_tasks_of_one_holder(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    async def scenario() -> None:
        async with manager.alock("r", "me", ttl=30) as outer:
            async with manager.alock("r", "me", timeout=0) as inner:
                assert inner.nested and inner.token == outer.token
            assert await manager.ais_lock_holder("r", "me")
            assert not await manager.aacquire_lock("r", "other", acquire_timeout=0)
            # A task of the same holder joins too; the outer exit then leaves it protected.
            joined, release = asyncio.Event(), asyncio.Event()

            async def task() -> bool:
                async with manager.alock("r", "me", timeout=0) as block:
                    joined.set()
                    await release.wait()
                    return block.nested and await manager.ais_lock_holder("r", "me")

            running = asyncio.ensure_future(task())
            await joined.wait()
        assert await manager.ais_lock_holder("r", "me")
        release.set()
        assert await running
        assert not await manager.ais_locked("r")

    loop_thread.run(scenario())


# ---------------------------------------------------------------- identity, copies, protocol


def test_copies_share_the_store(manager: txlock.BaseLockManager) -> None:
    assert manager.acquire_lock("k", "a")
    for clone in (copy.copy(manager), copy.deepcopy(manager), pickle.loads(pickle.dumps(manager)),
                  cloudpickle.loads(cloudpickle.dumps(manager))):
        assert clone == manager
        assert hash(clone) == hash(manager)
        assert clone.is_lock_holder("k", "a")
        assert not clone.acquire_lock("k", "b", acquire_timeout=0)
    clone = pickle.loads(pickle.dumps(manager))
    clone.release_lock("k", "a")
    assert not manager.is_locked("k")


def test_equal_configuration_gives_equal_managers(url: str, manager: txlock.BaseLockManager) -> None:
    other = txlock.from_url(url)
    try:
        assert other == manager
        assert len({other, manager}) == 1
        assert repr(other) == repr(manager)
        different = txlock.from_url(url, acquire_timeout=5)
        assert different != manager
        different.close()
    finally:
        other.close()


def test_url_round_trips(url: str, manager: txlock.BaseLockManager) -> None:
    rebuilt = txlock.from_url(manager.url)
    try:
        assert rebuilt == manager
    finally:
        rebuilt.close()


@runtime_checkable
class PrefectLockManager(Protocol):
    """A copy of ``prefect.locking.protocol.LockManager``'s method set."""

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool: ...
    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool: ...
    def release_lock(self, key: str, holder: str) -> None: ...
    def is_locked(self, key: str) -> bool: ...
    def is_lock_holder(self, key: str, holder: str) -> bool: ...
    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool: ...
    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool: ...


def test_structurally_a_prefect_lock_manager(manager: txlock.BaseLockManager) -> None:
    assert isinstance(manager, PrefectLockManager)
    for name, member in vars(PrefectLockManager).items():
        if name.startswith("_") or not callable(member):
            continue
        ours = pyinspect.signature(getattr(manager, name))
        theirs = pyinspect.signature(member)
        assert list(ours.parameters)[: len(theirs.parameters) - 1] == list(theirs.parameters)[1:], name
        assert pyinspect.iscoroutinefunction(getattr(manager, name)) == pyinspect.iscoroutinefunction(member)
    for name in ("arelease_lock", "ais_locked", "ais_lock_holder"):
        assert pyinspect.iscoroutinefunction(getattr(manager, name))
    assert "prefect" not in sys.modules or "txlock" not in str(sys.modules["prefect"])


def test_repr_names_the_store(manager: txlock.BaseLockManager) -> None:
    assert type(manager).__name__ in repr(manager)
    assert manager.url.split("://")[0] in manager.schemes
