"""The memory backend's fast paths (acquire_lock / release_lock in one frame each, the
store's own mutex) against the general path they stand in for, and what start-up imports."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import txlock
from conftest import eventually
from test_conformance import Background, queued

pytestmark = pytest.mark.memory


@pytest.fixture
def mem() -> txlock.MemoryLockManager:
    return txlock.MemoryLockManager(f"fast-{uuid.uuid4().hex}")


class Events(txlock.Observer):
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def on_event(self, event: txlock.LockEvent) -> None:
        self.kinds.append(event.kind)


# ---------------------------------------------------------------- one table, two paths


def test_grants_of_both_paths_share_one_token_sequence_and_one_description(mem: txlock.MemoryLockManager) -> None:
    tokens = []
    for i in range(3):
        assert mem.acquire_lock("k", f"p{i}")  # the fast path
        info = mem.inspect("k")
        assert info is not None and info.holder == f"p{i}" and info.expires_at is None
        tokens.append(info.token)
        mem.release_lock("k", f"p{i}")
        lease = mem.acquire_lease("k", f"q{i}")  # the general path
        assert lease is not None
        tokens.append(lease.token)
        mem.release_lock("k", f"q{i}")
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert not mem.is_locked("k")


def test_a_fast_grant_is_the_hold_a_general_grant_would_be(mem: txlock.MemoryLockManager) -> None:
    clock = [1000.0]
    mem._set_clock(lambda: clock[0])
    assert mem.acquire_lock("fast", "h", hold_timeout=30)
    assert mem.acquire_lease("slow", "h", ttl=30) is not None
    fast, slow = mem.inspect("fast"), mem.inspect("slow")
    assert fast is not None and slow is not None
    assert (fast.acquired_at, fast.expires_at) == (slow.acquired_at, slow.expires_at)
    # Re-acquiring through the general path keeps the fast grant's token and sets its ttl.
    again = mem.acquire_lease("fast", "h", ttl=60)
    assert again is not None and again.token == fast.token and again.ttl == 60.0
    clock[0] += 60
    assert not mem.is_locked("fast") and not mem.is_locked("slow")
    assert mem.acquire_lock("fast", "other", acquire_timeout=0)


def test_an_int_hold_timeout_is_the_float_the_general_path_makes_of_it(mem: txlock.MemoryLockManager) -> None:
    clock = [0.0]
    mem._set_clock(lambda: clock[0])
    assert mem.acquire_lock("k", "h", hold_timeout=60)
    hold = mem._store.holds["k"]
    assert type(hold[3]) is float and hold[3] == 60.0
    info = mem.inspect("k")
    assert info is not None and info.expires_at is not None
    assert info.expires_at - info.acquired_at == pytest.approx(60.0)


def test_a_release_hands_a_fast_grant_to_the_longest_waiter(mem: txlock.MemoryLockManager) -> None:
    assert mem.acquire_lock("k", "owner")
    first = Background(lambda: mem.acquire_lock("k", "w0", acquire_timeout=30))
    eventually(queued(mem, "k", 1), what="w0 to queue")
    second = Background(lambda: mem.acquire_lock("k", "w1", acquire_timeout=30))
    eventually(queued(mem, "k", 2), what="w1 to queue")
    mem.release_lock("k", "owner")
    assert first.get() is True and mem.is_lock_holder("k", "w0")
    assert not mem.acquire_lock("k", "newcomer", acquire_timeout=0)
    mem.release_lock("k", "w0")
    assert second.get() is True and mem.is_lock_holder("k", "w1")
    mem.release_lock("k", "w1")
    assert not mem.is_locked("k") and not mem._store.queues


def test_a_release_wakes_the_callers_waiting_for_the_key(mem: txlock.MemoryLockManager) -> None:
    assert mem.acquire_lock("k", "owner")
    watcher = Background(lambda: mem.wait_for_lock("k", timeout=30))
    eventually(lambda: mem._store.watchers.get("k"), what="the watcher to register")
    mem.release_lock("k", "owner")
    assert watcher.get() is True
    assert not mem._store.watchers


def test_releasing_an_expired_or_foreign_hold_behaves_as_in_the_general_path(mem: txlock.MemoryLockManager) -> None:
    clock = [0.0]
    mem._set_clock(lambda: clock[0])
    assert mem.acquire_lock("k", "a", hold_timeout=1)
    with pytest.raises(txlock.NotLockHolder, match="No lock held by b for transaction with key k"):
        mem.release_lock("k", "b")
    clock[0] = 1.0
    mem.release_lock("k", "a")  # expired: a no-op
    mem.release_lock("never-held", "a")
    assert not mem.is_locked("k")


# ---------------------------------------------------------------- arguments


LONG = 65536 + 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((1, "h"), TypeError),
        (("k", None), TypeError),
        (("k" * LONG, "h"), ValueError),
        (("k", "h" * LONG), ValueError),
        (("k", "h", -1), ValueError),
        (("k", "h", math.nan), ValueError),
        (("k", "h", True), TypeError),
        (("k", "h", "1"), TypeError),
        (("k", "h", None, 0), ValueError),
        (("k", "h", None, -1.0), ValueError),
        (("k", "h", None, math.inf), ValueError),
        (("k", "h", None, math.nan), ValueError),
        (("k", "h", None, True), TypeError),
        (("k", "h", None, "5"), TypeError),
        (("k", "h", None, 2**60), None),  # valid, converted by the general path
    ],
)
def test_the_fast_path_checks_arguments_as_the_general_path_does(
    mem: txlock.MemoryLockManager, args: tuple[Any, ...], error: type[Exception] | None
) -> None:
    general = txlock.BaseLockManager.acquire_lock
    if error is None:
        assert mem.acquire_lock(*args)
        mem.release_lock(*args[:2])
        assert general(mem, *args)
        return
    with pytest.raises(error) as expected:
        general(mem, *args)
    with pytest.raises(error) as got:
        mem.acquire_lock(*args)
    assert str(got.value) == str(expected.value)
    with pytest.raises(error):
        asyncio.run(mem.aacquire_lock(*args))
    if len(args) == 2:
        with pytest.raises(error):
            mem.release_lock(*args)
    assert not mem.list_locks()


def test_a_key_and_a_holder_each_within_its_limit_are_accepted_whatever_their_sum(
    mem: txlock.MemoryLockManager,
) -> None:
    key, holder = "k" * mem.max_key_length, "h" * mem.max_holder_length
    assert mem.acquire_lock(key, holder)
    assert mem.is_lock_holder(key, holder)
    mem.release_lock(key, holder)
    assert not mem.is_locked(key)


# ---------------------------------------------------------------- what bypasses the fast paths


def test_observers_hear_every_protocol_call(mem: txlock.MemoryLockManager) -> None:
    seen = Events()
    mem.add_observer(seen)
    assert mem.acquire_lock("k", "a")
    mem.release_lock("k", "a")
    assert asyncio.run(mem.aacquire_lock("k", "a"))
    asyncio.run(mem.arelease_lock("k", "a"))
    assert seen.kinds == ["acquired", "released", "acquired", "released"]
    mem.remove_observer(seen)
    txlock.add_observer(seen)
    try:
        assert mem.acquire_lock("k", "b")
        mem.release_lock("k", "b")
    finally:
        txlock.remove_observer(seen)
    assert seen.kinds[4:] == ["acquired", "released"]


def waiting(manager: txlock.BaseLockManager, key: str) -> bool:
    info = manager.inspect(key)
    return info is not None and bool(info.waiters)


async def contended(owner: txlock.MemoryLockManager, waiter: txlock.MemoryLockManager) -> bool:
    assert owner.acquire_lock("k", "owner")
    task = asyncio.ensure_future(waiter.aacquire_lock("k", "w", acquire_timeout=30))
    while not waiting(owner, "k") and not task.done():  # it runs on this loop: yield until it queues
        await asyncio.sleep(0)
    owner.release_lock("k", "owner")
    return await task


def test_a_contended_async_acquire_in_raise_on_timeout_mode_waits(mem: txlock.MemoryLockManager) -> None:
    # aacquire_lock first tries the sync fast path with one attempt; finding the key held
    # must not raise the LockTimeout of a zero timeout.
    strict = txlock.MemoryLockManager(mem.name, raise_on_timeout=True)
    assert asyncio.run(contended(mem, strict)) is True
    assert mem.is_lock_holder("k", "w")


def test_a_contended_async_acquire_tells_observers_of_one_grant(mem: txlock.MemoryLockManager) -> None:
    seen = Events()
    observed = txlock.MemoryLockManager(mem.name)
    observed.add_observer(seen)
    assert asyncio.run(contended(mem, observed)) is True
    assert seen.kinds == ["acquired"]


class CountingStore(txlock.MemoryLockManager):
    """A subclass that changes two primitives: the protocol calls must go through them."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[str] = []

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Any) -> Any:
        self.calls.append("try_acquire")
        return super()._try_acquire(key, holder, ttl, waiter)

    def _release(self, key: str, holder: str) -> Any:
        self.calls.append("release")
        return super()._release(key, holder)


def test_a_subclass_that_changes_a_primitive_gets_the_general_protocol_methods() -> None:
    m = CountingStore(f"count-{uuid.uuid4().hex}")
    assert m.acquire_lock("k", "h")
    m.release_lock("k", "h")
    assert asyncio.run(m.aacquire_lock("k", "h"))
    asyncio.run(m.arelease_lock("k", "h"))
    assert m.calls == ["try_acquire", "release", "try_acquire", "release"]


# ---------------------------------------------------------------- the store's mutex


@contextlib.contextmanager
def holding(store: Any) -> Iterator[None]:
    """Hold a store's mutex, as a primitive does while it works on the table."""
    with store.mutex:
        yield



@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_another_thread_holds_the_store_mutex_can_use_the_store(
    mem: txlock.MemoryLockManager,
) -> None:
    store = mem._store
    inside, leave = threading.Event(), threading.Event()

    def hold_the_mutex() -> None:
        with holding(store):
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold_the_mutex)
    holder.start()
    try:
        assert inside.wait(30)
        with warnings.catch_warnings():  # Python 3.12+ warns of fork() with threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            signal.alarm(20)  # a deadlock ends the child instead of the test run
            ok = mem.acquire_lock("k", "child") and mem.is_lock_holder("k", "child")
            mem.release_lock("k", "child")
            os._exit(0 if ok and not mem.is_locked("k") else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        leave.set()
        holder.join(30)
    assert mem.acquire_lock("k", "parent")  # the parent's mutex works once given back


# ---------------------------------------------------------------- start-up


@pytest.mark.parametrize(
    ("url", "absent"),
    [
        ("memory://", ["logging", "urllib.parse", "asyncio", "txlock._context", "txlock._url", "txlock._multi"]),
        ("file://{tmp}/locks", ["logging", "uuid", "asyncio", "txlock._context", "txlock._multi"]),
    ],
)
def test_a_first_lock_imports_only_what_it_uses(tmp_path: Any, url: str, absent: list[str]) -> None:
    target = (
        "txlock.MemoryLockManager()" if url == "memory://" else f"txlock.from_url({url.format(tmp=tmp_path)!r})"
    )
    code = (
        "import sys, txlock\n"
        f"assert {target}.acquire_lock('k', 'h')\n"
        f"print(sorted(n for n in {absent!r} if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
