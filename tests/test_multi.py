"""Multi-key locks: ``lock_many()`` / ``alock_many()`` on every backend, in both worlds.

All or nothing, one canonical order (so overlapping key sets never deadlock), one deadline
for the set, nothing left held after a timeout, a cancellation, an interrupt or an error,
and a lost hold on any key reported. The invariants are observed by markers inside the
critical section of each key (per-key counters the test guards, ``O_EXCL`` marker files
for processes), never by the library's own answers. The last tests drive
``txlock run K1 K2 -- COMMAND`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import txlock
from conftest import Api, LoopThread, aeventually, eventually, requires

KEYS = ["k0", "k1", "k2", "k3", "k4", "k5"]


# ---------------------------------------------------------------- helpers


def held(api: Api, keys: Any, body: Callable[[txlock.MultiLockContext], Any], **options: Any) -> Any:
    """Run ``body(context)`` inside a ``lock_many`` block of ``api``'s world: ``with`` in this
    thread, or ``async with`` in a task on the test loop (the body then runs on its thread)."""
    manager = api.m
    if api.loop is None:
        with manager.lock_many(keys, **options) as context:
            return body(context)

    async def run() -> Any:
        async with manager.alock_many(keys, **options) as context:
            return body(context)

    return api.loop.run(run())


def parked(manager: txlock.BaseLockManager, key: str, count: int) -> Callable[[], bool]:
    """A predicate: ``count`` waiters wait on ``key`` (in the store's count, or in this process)."""
    if manager.capabilities.counts_waiters:

        def counted() -> bool:
            info = manager.inspect(key)
            return info is not None and info.waiters is not None and info.waiters >= count

        return counted
    assert manager._parked_here(key) is not None, f"{type(manager).__name__} cannot show a parked waiter"
    return lambda: manager._parked_here(key) == count


def nothing_held(manager: txlock.BaseLockManager, keys: list[str]) -> None:
    """Assert that no key is held, asking each key and the listing."""
    assert [key for key in keys if manager.is_locked(key)] == []
    assert manager.list_locks() == []


class Recorder(txlock.Observer):
    """The order of grants and releases, as the manager reports them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_acquired(self, event: txlock.LockEvent) -> None:
        self.events.append(("acquired", event.key))

    def on_released(self, event: txlock.LockEvent) -> None:
        self.events.append(("released", event.key))


class Sections:
    """Per-key critical sections observed by the test: how many are inside each key at once
    (any value but 1 while inside is an overlap) and a deliberately non-atomic counter per
    key (an overlap loses an increment)."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.inside = dict.fromkeys(KEYS, 0)
        self.count = dict.fromkeys(KEYS, 0)
        self.expected = dict.fromkeys(KEYS, 0)
        self.overlaps: list[str] = []

    def enter(self, keys: list[str]) -> dict[str, int]:
        with self.guard:
            for key in set(keys):
                self.inside[key] += 1
                self.expected[key] += 1
                if self.inside[key] != 1:
                    self.overlaps.append(key)
            return {key: self.count[key] for key in set(keys)}

    def leave(self, seen: dict[str, int]) -> None:
        with self.guard:
            for key, value in seen.items():
                self.count[key] = value + 1
                self.inside[key] -= 1

    def check(self) -> None:
        assert self.overlaps == []
        assert self.count == self.expected
        assert all(value == 0 for value in self.inside.values())


# ---------------------------------------------------------------- the block


def test_every_key_is_held_by_one_holder_and_released(api: Api) -> None:
    recorder = Recorder()
    api.m.add_observer(recorder)

    def body(context: txlock.MultiLockContext) -> dict[str, int]:
        assert context.keys == ("a", "b", "c")
        for key in "abc":
            assert api.m.is_lock_holder(key, context.holder)
        assert list(context.leases) == ["a", "b", "c"]
        assert all(lease.holder == context.holder and lease.key == key for key, lease in context.leases.items())
        assert context.tokens == {key: lease.token for key, lease in context.leases.items()}
        assert list(context.contexts) == ["a", "b", "c"] and not context.lost and context.lost_keys == ()
        context.check()
        assert "held, tokens" in repr(context)
        return context.tokens

    tokens = held(api, ["c", "a", "b"], body)
    nothing_held(api.m, ["a", "b", "c"])
    # Taken in canonical order, released in the reverse order.
    assert recorder.events == [
        ("acquired", "a"), ("acquired", "b"), ("acquired", "c"),
        ("released", "c"), ("released", "b"), ("released", "a"),
    ]
    # A second block gets new grants (tokens never go back).
    again = held(api, ("a", "b", "c"), lambda context: context.tokens)
    assert all(again[key] > tokens[key] for key in "abc")


def test_outside_the_block_there_is_nothing_to_read(manager: txlock.BaseLockManager) -> None:
    block = manager.lock_many(["x", "y"], "me")
    assert "not entered" in repr(block)
    for name in ("leases", "tokens", "contexts"):
        with pytest.raises(RuntimeError, match="not held"):
            getattr(block, name)
    assert block.valid_until is None and not block.lost
    with block:
        pass
    assert "released" in repr(block)
    with pytest.raises(RuntimeError, match="not held"):
        getattr(block, "leases")  # noqa: B009
    # The object can be used again once it has exited, not while it runs.
    with block as again:
        assert manager.is_lock_holder("x", "me")
        with pytest.raises(RuntimeError, match="already in use"), again:
            pytest.fail("the body must not run")
        assert manager.is_lock_holder("x", "me") and manager.is_lock_holder("y", "me")
    nothing_held(manager, ["x", "y"])


def test_repeated_keys_are_taken_once(api: Api) -> None:
    def body(context: txlock.MultiLockContext) -> None:
        assert context.keys == ("x", "y")
        assert sorted(info.key for info in api.m.list_locks()) == ["x", "y"]

    held(api, ["y", "x", "y", "x", "x"], body)
    held(api, (key for key in ["x", "x"]), lambda context: context.keys == ("x",))  # any iterable
    nothing_held(api.m, ["x", "y"])


def test_one_default_holder_for_all_keys_unique_per_block(manager: txlock.BaseLockManager) -> None:
    with manager.lock_many(["a", "b"]) as one, manager.lock_many(["c", "d"]) as two:
        assert one.holder != two.holder
        assert {info.holder for info in manager.list_locks() if info.key in "ab"} == {one.holder}
        assert {info.holder for info in manager.list_locks() if info.key in "cd"} == {two.holder}


def test_the_canonical_order_is_code_points_and_utf8_bytes(manager: txlock.BaseLockManager) -> None:
    keys = ["z", "", "é", "\ud800", "\U0001f512", "\uffff", "\ue000", "A", "a/b", "a", "\x00", "é"]
    recorder = Recorder()
    manager.add_observer(recorder)
    with manager.lock_many(keys, "me") as block:
        order = list(block.keys)
    by_bytes = sorted(set(keys), key=lambda key: key.encode("utf-8", "surrogatepass"))
    assert order == by_bytes == sorted(set(keys))
    assert [key for kind, key in recorder.events if kind == "acquired"] == order
    assert [key for kind, key in recorder.events if kind == "released"] == order[::-1]
    nothing_held(manager, order)


def test_bad_arguments_are_refused_before_any_io(manager: txlock.BaseLockManager) -> None:
    with pytest.raises(TypeError, match="single str"):
        manager.lock_many("abc")
    with pytest.raises(TypeError, match="bytes"):
        manager.lock_many(b"abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable of str keys"):
        manager.lock_many(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str"):
        manager.lock_many(["a", 1])  # type: ignore[list-item]
    for empty in ([], (), set(), iter([])):
        with pytest.raises(txlock.ConfigurationError, match="at least one key") as caught:
            manager.lock_many(empty)
        assert isinstance(caught.value, ValueError)
    with pytest.raises(ValueError, match="max_key_length"):
        manager.lock_many(["a", "x" * (manager.max_key_length + 1)])
    with pytest.raises(TypeError, match="holder"):
        manager.lock_many(["a"], 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        manager.lock_many(["a"], timeout=-1)
    with pytest.raises(ValueError, match="ttl"):
        manager.lock_many(["a"], ttl=0)
    assert manager.list_locks() == []


# ---------------------------------------------------------------- all or nothing


@pytest.mark.parametrize("timeout", [0, 0.2])
def test_a_key_held_by_another_times_out_and_nothing_stays_held(api: Api, timeout: float) -> None:
    assert api.acquire_lock("m", "other")
    with pytest.raises(txlock.LockTimeout) as caught:
        held(api, ["z", "a", "m"], lambda context: pytest.fail("the body must not run"), timeout=timeout)
    error = caught.value
    assert error.key == "m" and error.timeout == timeout and isinstance(error, TimeoutError)
    assert "'m'" in str(error)
    assert not api.is_locked("a") and not api.is_locked("z")
    assert api.is_lock_holder("m", "other")
    api.release_lock("m", "other")
    nothing_held(api.m, ["a", "m", "z"])


def test_the_deadline_is_shared_by_the_keys(api: Api) -> None:
    # "a" frees itself after 1 s (its hold times out); "b" stays held. With one deadline of
    # 2 s for the set, the block gets "a" after about 1 s and gives up on "b" about 1 s
    # later; a deadline per key would wait 2 s more for "b". The margin against that is 1 s.
    assert api.acquire_lock("a", "other", hold_timeout=1.0)
    assert api.acquire_lock("b", "other")
    started = time.monotonic()
    with pytest.raises(txlock.LockTimeout) as caught:
        held(api, ["a", "b"], lambda context: pytest.fail("the body must not run"), timeout=2.0)
    waited = time.monotonic() - started
    assert caught.value.key == "b" and caught.value.timeout == 2.0
    assert 2.0 <= waited < 3.0, waited
    assert not api.is_locked("a") and api.is_lock_holder("b", "other")


def test_a_key_freed_while_waiting_is_taken_and_the_block_runs(api: Api, manager: txlock.BaseLockManager) -> None:
    assert api.acquire_lock("b", "other")
    got: list[dict[str, int]] = []
    waiter = threading.Thread(target=lambda: got.append(held(api, ["a", "b", "c"], lambda ctx: ctx.tokens)))
    waiter.start()
    eventually(parked(manager, "b", 1), what="the block to wait for 'b'")
    assert manager.is_locked("a") and not manager.is_locked("c")  # not atomic: taken one by one
    api.release_lock("b", "other")
    waiter.join(30)
    assert not waiter.is_alive() and list(got[0]) == ["a", "b", "c"]
    nothing_held(manager, ["a", "b", "c"])


def test_an_error_in_the_body_releases_every_key(api: Api) -> None:
    def body(context: txlock.MultiLockContext) -> None:
        raise KeyError("body")

    with pytest.raises(KeyError):
        held(api, ["a", "b", "c"], body, ttl=30)
    nothing_held(api.m, ["a", "b", "c"])


@pytest.mark.parametrize("exception", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_while_waiting_releases_the_keys_taken(
    manager: txlock.BaseLockManager, exception: type[BaseException]
) -> None:
    """A signal handler raises in the main thread while the block waits for its second key."""
    assert threading.current_thread() is threading.main_thread()
    assert manager.acquire_lock("b", "other")

    def interrupt(signal_number: int, frame: object) -> None:
        raise exception("interrupted")

    def send() -> None:
        eventually(parked(manager, "b", 1), what="the block to wait for 'b'")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    sender = threading.Thread(target=send)
    try:
        sender.start()
        with pytest.raises(exception, match="interrupted"), manager.lock_many(["a", "b", "c"], "me", ttl=30):
            pytest.fail("the body must not run")
    finally:
        sender.join(30)
        signal.signal(signal.SIGUSR1, previous)
    assert not manager.is_locked("a") and not manager.is_locked("c")
    assert manager.is_lock_holder("b", "other")
    manager.release_lock("b", "other")
    nothing_held(manager, ["a", "b", "c"])


def test_a_cancelled_waiting_block_releases_the_keys_taken(
    manager: txlock.BaseLockManager, loop_thread: LoopThread
) -> None:
    async def scenario() -> None:
        assert await manager.aacquire_lock("b", "other")
        task = asyncio.ensure_future(manager.alock_many(["a", "b"], "me", ttl=30).__aenter__())
        await aeventually(parked(manager, "b", 1), what="the block to wait for 'b'")
        assert await manager.ais_lock_holder("a", "me")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await manager.ais_locked("a")
        assert await manager.ais_lock_holder("b", "other")
        await manager.arelease_lock("b", "other")

    loop_thread.run(scenario())
    nothing_held(manager, ["a", "b"])


def test_a_thousand_random_cancellations_leak_nothing(
    manager: txlock.BaseLockManager, loop_thread: LoopThread
) -> None:
    rng = random.Random(15)
    batches, per_batch = 40, 25  # 1,000 blocks, each cancelled at a random moment
    inside: dict[str, int] = dict.fromkeys(KEYS, 0)
    overlaps: list[str] = []
    # Where each cancellation landed: while acquiring (waiting, or between two keys), in
    # the body, or while releasing; "completed" blocks had ended before it came.
    landed: dict[str, int] = {"acquiring": 0, "body": 0, "releasing": 0, "completed": 0}
    never = asyncio.Event()  # never set: a block whose body waits on it ends only by its cancellation

    async def block(keys: list[str], turns_inside: int | None, ttl: float | None) -> None:
        step = "acquiring"
        try:
            async with manager.alock_many(keys, timeout=60, ttl=ttl):
                step = "body"
                for key in set(keys):
                    inside[key] += 1
                    if inside[key] != 1:
                        overlaps.append(key)
                try:
                    if turns_inside is None:
                        await never.wait()
                    for _ in range(turns_inside or 0):
                        await asyncio.sleep(0)
                finally:
                    for key in set(keys):
                        inside[key] -= 1
                step = "releasing"
        except asyncio.CancelledError:
            landed[step] += 1
            raise
        landed["completed"] += 1

    async def cancel(task: asyncio.Future[None], turns: int, delay: float) -> None:
        # 1 to 12 turns of the loop, sometimes a few milliseconds more (stores with I/O): the
        # cancellation lands at a different step of each block. These waits vary the
        # interleaving; the test relies on no order.
        for _ in range(turns):
            await asyncio.sleep(0)
        if delay:
            await asyncio.sleep(delay)
        task.cancel()

    async def scenario() -> None:
        for _ in range(batches):
            # Another holder keeps a few keys for the start of the batch, so that some blocks wait.
            owned = rng.sample(KEYS, rng.randint(0, 2))
            for key in owned:
                assert await manager.aacquire_lock(key, "owner", acquire_timeout=60)
            tasks = [
                asyncio.ensure_future(
                    block(rng.sample(KEYS, rng.randint(1, 4)), rng.choice([None, 0, 1, 3]), rng.choice([None, 30.0]))
                )
                for _ in range(per_batch)
            ]
            cancellers = [
                asyncio.ensure_future(cancel(task, rng.randint(1, 12), rng.choice([0, 0, rng.random() * 0.004])))
                for task in tasks
            ]
            for _ in range(rng.randint(1, 12)):
                await asyncio.sleep(0)
            for key in owned:
                await manager.arelease_lock(key, "owner")
            await asyncio.gather(*cancellers)
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if not (result is None or isinstance(result, asyncio.CancelledError)):
                    raise result
            assert [key for key in KEYS if await manager.ais_locked(key)] == []

    loop_thread.run(scenario(), timeout=600)
    assert overlaps == []
    assert sum(landed.values()) == batches * per_batch
    # Cancellations landed while acquiring and later (in the body or the release): which
    # later phase a loaded machine reaches varies.
    assert landed["acquiring"] > 0 and landed["body"] + landed["releasing"] + landed["completed"] > 0, landed
    nothing_held(manager, KEYS)


# ---------------------------------------------------------------- never two holders, never a deadlock


def test_threads_never_share_a_key(manager: txlock.BaseLockManager) -> None:
    workers, rounds = 8, 25
    sections = Sections()
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        rng = random.Random(index)
        try:
            start.wait()
            for _ in range(rounds):
                keys = rng.sample(KEYS, rng.randint(1, 4)) + rng.sample(KEYS, 1)  # a repeat now and then
                with manager.lock_many(keys, f"t{index}", timeout=120, ttl=rng.choice([None, 30])):
                    seen = sections.enter(keys)
                    threading.Event().wait(0)  # let another thread run here if it can: widens the window
                    sections.leave(seen)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(thread.is_alive() for thread in threads), "a worker is stuck"
    assert errors == []
    sections.check()
    nothing_held(manager, KEYS)


def test_tasks_never_share_a_key(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    tasks, rounds = 10, 12
    sections = Sections()

    async def work(index: int) -> None:
        rng = random.Random(index)
        for _ in range(rounds):
            keys = rng.sample(KEYS, rng.randint(1, 4))
            async with manager.alock_many(keys, f"task{index}", timeout=120, ttl=rng.choice([None, 30])):
                seen = sections.enter(keys)
                await asyncio.sleep(0)  # every other task runs here: widens the window for an overlap
                sections.leave(seen)

    async def main() -> None:
        await asyncio.gather(*(work(i) for i in range(tasks)))

    loop_thread.run(main(), timeout=180)
    sections.check()
    nothing_held(manager, KEYS)


def test_overlapping_sets_in_opposite_orders_never_deadlock(api: Api, manager: txlock.BaseLockManager) -> None:
    """Worker i wants three neighbouring keys of a ring of four, every other worker listing
    them backwards: taken in the order given, two such workers would deadlock at once."""
    workers, rounds = 8, 20
    ring = KEYS[:4]
    sets = [[ring[(i + j) % 4] for j in range(3)] for i in range(workers)]
    sets = [keys if i % 2 else keys[::-1] for i, keys in enumerate(sets)]
    sections = Sections()
    finished: list[int] = []

    if api.loop is None:

        def work(index: int) -> None:
            for _ in range(rounds):
                with manager.lock_many(sets[index], f"w{index}"):  # no timeout: a deadlock would hang
                    seen = sections.enter(sets[index])
                    threading.Event().wait(0)
                    sections.leave(seen)
            finished.append(index)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    else:

        async def awork(index: int) -> None:
            for _ in range(rounds):
                async with manager.alock_many(sets[index], f"w{index}"):
                    seen = sections.enter(sets[index])
                    await asyncio.sleep(0)
                    sections.leave(seen)
            finished.append(index)

        async def main() -> None:
            await asyncio.wait([asyncio.ensure_future(awork(i)) for i in range(workers)], timeout=120)

        api.loop.run(main(), timeout=150)
    assert sorted(finished) == list(range(workers)), "some workers never finished: a deadlock"
    sections.check()
    nothing_held(manager, ring)


def process_worker(url: str, rounds: int, markers: str, seed: int) -> tuple[int, list[str]]:
    """One spawned process: ``rounds`` blocks over random key sets in random orders; inside,
    one ``O_EXCL`` marker file per key (an existing one means another holder is inside)."""
    manager = txlock.from_url(url)
    rng = random.Random(seed)
    violations: list[str] = []
    sections = 0
    try:
        for _ in range(rounds):
            keys = rng.sample(KEYS, rng.randint(1, 4))
            with manager.lock_many(keys, f"p{seed}", timeout=120, ttl=rng.choice([None, 30])):
                made = []
                for key in keys:
                    path = os.path.join(markers, key)
                    try:
                        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                        made.append(path)
                    except FileExistsError:
                        violations.append(key)
                os.sched_yield()
                for path in made:
                    os.unlink(path)
            sections += 1
    finally:
        manager.close()
    return sections, violations


@pytest.mark.processes
def test_spawned_processes_never_share_a_key(url: str, manager: txlock.BaseLockManager, tmp_path: Path) -> None:
    requires(manager, "processes")
    workers, rounds = 4, 30
    markers = tmp_path / "markers"
    markers.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = [pool.apply_async(process_worker, (url, rounds, str(markers), i)) for i in range(workers)]
        done = [result.get(timeout=240) for result in results]
    assert [violations for _, violations in done] == [[]] * workers
    assert sum(sections for sections, _ in done) == workers * rounds
    assert list(markers.iterdir()) == []
    nothing_held(manager, KEYS)


# ---------------------------------------------------------------- reentrancy, loss, validity


def test_a_key_already_held_by_the_holder_is_joined(manager: txlock.BaseLockManager) -> None:
    with manager.lock("a", "me") as outer:
        with manager.lock_many(["b", "a"], "me", timeout=0) as both:
            assert both.contexts["a"].nested and not both.contexts["b"].nested
            assert both.tokens["a"] == outer.token
        assert manager.is_lock_holder("a", "me") and not manager.is_locked("b")
        # Another holder is another lock: it times out on "a" and keeps nothing.
        with pytest.raises(txlock.LockTimeout), manager.lock_many(["a", "b"], "you", timeout=0):
            pytest.fail("the body must not run")
        assert not manager.is_locked("b")
    nothing_held(manager, ["a", "b"])


def test_a_lost_key_is_reported_and_raised_at_exit(api: Api) -> None:
    manager = api.m
    lost: list[txlock.Lease] = []

    def body(context: txlock.MultiLockContext) -> None:
        assert manager.force_release("b")
        assert manager.acquire_lock("b", "thief")
        eventually(lambda: context.lost, what="the renewer to notice")
        eventually(lambda: bool(lost), what="the on_lost callback")
        assert context.lost_keys == ("b",)
        with pytest.raises(txlock.LockLost, match="'b'"):
            context.check()
        assert not context.contexts["a"].lost and not context.contexts["c"].lost

    with pytest.raises(txlock.LockLost, match="'b'"):
        held(api, ["a", "b", "c"], body, holder="me", ttl=0.6, on_lost=lost.append)
    assert [(lease.key, lease.holder) for lease in lost] == [("b", "me")]
    # The other keys were released; the thief's hold was left alone.
    assert not manager.is_locked("a") and not manager.is_locked("c")
    assert manager.is_lock_holder("b", "thief")


def test_a_lost_key_without_ttl_is_noticed_at_exit(manager: txlock.BaseLockManager) -> None:
    with pytest.raises(txlock.LockLost, match="'a'"), manager.lock_many(["a", "b"], "me") as block:
        assert manager.force_release("a")
        assert manager.acquire_lock("a", "thief")
    assert block.lost and block.lost_keys == ("a",)
    assert "lost" in repr(block)
    assert manager.is_lock_holder("a", "thief") and not manager.is_locked("b")


def test_an_error_in_the_body_wins_over_a_lost_key(manager: txlock.BaseLockManager) -> None:
    with pytest.raises(KeyError), manager.lock_many(["a", "b"], "me"):
        manager.force_release("b")
        raise KeyError("body")
    nothing_held(manager, ["a", "b"])


def test_with_a_ttl_every_key_is_renewed_and_valid_until_is_the_earliest(manager: txlock.BaseLockManager) -> None:
    with manager.lock_many(["a", "b", "c"], "me", ttl=0.6) as block:
        first = {key: lease.expires_at or 0.0 for key, lease in block.leases.items()}
        eventually(
            lambda: all((lease.expires_at or 0) > first[key] + 0.3 for key, lease in block.leases.items()),
            what="two renewals of every key",
        )
        eventually(lambda: time.time() > max(first.values()) + 0.1, what="the first expiries to pass")
        assert all(manager.is_lock_holder(key, "me") for key in "abc") and not block.lost
        times = [context.valid_until for context in block.contexts.values()]
        assert block.valid_until is not None and None not in times
        assert block.valid_until == min(t for t in times if t is not None)
    assert block.valid_until is None
    nothing_held(manager, ["a", "b", "c"])


def test_managers_and_the_package_expose_it(manager: txlock.BaseLockManager) -> None:
    assert type(manager).alock_many is type(manager).lock_many
    assert "MultiLockContext" in txlock.__all__
    assert isinstance(manager.lock_many(["a"]), txlock.MultiLockContext)


# ---------------------------------------------------------------- the command: txlock run K1 K2 -- COMMAND


class Command:
    """``python -m txlock`` on a private SQLite store (the default backend) in ``tmp_path``."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TXLOCK_")}
        self.env.update(PYTHONUNBUFFERED="1", TXLOCK_URL=f"sqlite:///{tmp_path}/cli.db")
        self.url = self.env["TXLOCK_URL"]

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "txlock", *args]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args), env=self.env, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def held(self) -> dict[str, str]:
        done = self("--json", "ls")
        assert done.returncode == 0, done.stderr
        return {info["key"]: info["holder"] for info in json.loads(done.stdout)}


@pytest.fixture
def command(tmp_path: Path) -> Command:
    pytest.importorskip("click")
    return Command(tmp_path)


# Runs under `txlock run`: writes what it sees (its environment, the store's listing) to a file.
REPORT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    listing = subprocess.run([sys.executable, "-m", "txlock", "--json", "ls"], capture_output=True, text=True)
    env = {name: os.environ.get(name) for name in ("TXLOCK_KEYS", "TXLOCK_TOKENS", "TXLOCK_KEY", "TXLOCK_TOKEN",
                                                    "TXLOCK_HOLDER")}
    with open(sys.argv[1], "w") as out:
        json.dump({"env": env, "ls": json.loads(listing.stdout)}, out)
    print("ran")
    """
)

# Runs under `txlock run`: a critical section over the keys in argv, with O_EXCL markers.
SECTION = textwrap.dedent(
    """
    import os, sys, time
    markers, log = sys.argv[1], sys.argv[2]
    made = []
    for key in sys.argv[3:]:
        path = os.path.join(markers, key)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            with open(log, "a") as out:
                out.write(f"OVERLAP {key}\\n")
            raise SystemExit(1)
        made.append(path)
    time.sleep(0.05)  # widens the window in which a broken lock would let another in
    for path in made:
        os.unlink(path)
    with open(log, "a") as out:
        out.write("section\\n")
    """
)


@pytest.mark.cli
@pytest.mark.sqlite
def test_run_holds_every_key_while_the_command_runs(command: Command, tmp_path: Path) -> None:
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    report = tmp_path / "report.json"
    done = command("run", "k2", "k1", "--holder", "me", "k2", "--", sys.executable, str(script), str(report))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran\n"
    seen = json.loads(report.read_text())
    assert {info["key"]: info["holder"] for info in seen["ls"]} == {"k1": "me", "k2": "me"}
    env = seen["env"]
    assert json.loads(env["TXLOCK_KEYS"]) == ["k1", "k2"] and env["TXLOCK_HOLDER"] == "me"
    tokens = {info["key"]: info["token"] for info in seen["ls"]}
    assert json.loads(env["TXLOCK_TOKENS"]) == tokens
    assert env["TXLOCK_KEY"] is None and env["TXLOCK_TOKEN"] is None  # one key each: only for a single key
    assert command.held() == {}
    # One key: the single-key variables as before, the lists too.
    done = command("run", "solo", "--", sys.executable, str(script), str(report))
    assert done.returncode == 0, done.stderr
    env = json.loads(report.read_text())["env"]
    assert env["TXLOCK_KEY"] == "solo" and json.loads(env["TXLOCK_KEYS"]) == ["solo"]
    assert json.loads(env["TXLOCK_TOKENS"]) == {"solo": int(env["TXLOCK_TOKEN"])}
    # Without '--' the first word is the key and the rest the command, as it always was.
    done = command("run", "solo", sys.executable, str(script), str(report))
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr


@pytest.mark.cli
@pytest.mark.sqlite
def test_run_takes_all_keys_or_none(command: Command, tmp_path: Path) -> None:
    manager = txlock.from_url(command.url)
    try:
        assert manager.acquire_lock("b", "other", hold_timeout=60)
        marker = tmp_path / "ran"
        for args in (["--timeout", "0"], ["--timeout", "0.3"]):
            done = command("run", "a", "b", "c", *args, "--", "touch", str(marker))
            assert done.returncode == 75, done.stderr
            assert "'b'" in done.stderr and "other" in done.stderr
            assert not marker.exists()
            assert command.held() == {"b": "other"}
        done = command("--json", "run", "c", "b", "--timeout", "0", "--", "touch", str(marker))
        assert done.returncode == 75 and json.loads(done.stderr)["error"] == "timed_out"
        manager.release_lock("b", "other")
        assert command("run", "a", "b", "c", "--timeout", "0", "--", "touch", str(marker)).returncode == 0
        assert marker.exists() and command.held() == {}
    finally:
        manager.close()


@pytest.mark.cli
@pytest.mark.sqlite
def test_a_signal_while_waiting_for_the_second_key_releases_the_first(command: Command, tmp_path: Path) -> None:
    manager = txlock.from_url(command.url)
    waiting = None
    try:
        assert manager.acquire_lock("b", "owner", hold_timeout=60)
        waiting = command.popen("run", "b", "a", "--holder", "me", "--", "touch", str(tmp_path / "ran"))
        # "a" comes first in the canonical order: once it is held, the run waits for "b".
        eventually(lambda: manager.is_lock_holder("a", "me"), timeout=60, what="the run to take 'a'")
        waiting.send_signal(signal.SIGTERM)
        _, stderr = waiting.communicate(timeout=60)
        assert waiting.returncode == 128 + signal.SIGTERM, stderr
        assert "interrupted while waiting for 'b'" in stderr
        assert command.held() == {"b": "owner"} and not (tmp_path / "ran").exists()
    finally:
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.communicate(timeout=30)
        manager.close()


@pytest.mark.cli
@pytest.mark.sqlite
def test_runs_over_overlapping_keys_in_opposite_orders_never_interleave(command: Command, tmp_path: Path) -> None:
    script = tmp_path / "section.py"
    script.write_text(SECTION)
    markers = tmp_path / "markers"
    markers.mkdir()
    log = tmp_path / "sections.log"
    orders = [["x", "y", "z"], ["z", "y", "x"], ["y", "x"], ["z", "x"]] * 2
    procs = [
        command.popen("run", *keys, "--", sys.executable, str(script), str(markers), str(log), *keys)
        for keys in orders
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    assert log.read_text().splitlines() == ["section"] * len(orders)
    assert list(markers.iterdir()) == [] and command.held() == {}


@pytest.mark.cli
@pytest.mark.sqlite
def test_run_reports_the_lost_key_and_releases_the_others(command: Command, tmp_path: Path) -> None:
    started = tmp_path / "started"
    code = f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\nwhile True: time.sleep(1)"
    proc = command.popen("run", "a", "b", "--holder", "me", "--ttl", "1", "--", sys.executable, "-c", code)
    try:
        eventually(started.exists, timeout=60, what="the command to start")
        manager = txlock.from_url(command.url)
        try:
            assert manager.force_release("b")
            assert manager.acquire_lock("b", "thief", hold_timeout=60)
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 76, stderr
            assert "lock 'b' was lost" in stderr
            assert command.held() == {"b": "thief"}
        finally:
            manager.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
