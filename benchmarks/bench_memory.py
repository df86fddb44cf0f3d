"""The in-process backend beside a bare ``threading.Lock`` and Prefect's MemoryLockManager.

    python benchmarks/bench_memory.py

Rows: uncontended acquire+release (sync/async, with and without a hold timeout), hand-off
latency (thread to thread, task to task), 8 threads on one key with an exclusion check,
10,000 timed holds (time, memory, threads), expiry lateness.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import txlock
from _common import prefect_manager
from _harness import Row, pct, per_op, per_op_interleaved, report, step
from _sizes import HANDOFFS, MANY_KEYS, sized

TASK_HANDOFFS = sized(500, 10)
CONTENTION_SECONDS = sized(1.0, 0.2)
HOLDS = MANY_KEYS
EXPIRIES, PREFECT_EXPIRIES = sized((20, 5), (3, 2))


def prefect_memory() -> Any | None:
    return prefect_manager("prefect.locking.memory", "MemoryLockManager")


# ---------------------------------------------------------------- uncontended


def uncontended(m: Any, hold_timeout: float | None) -> Callable[[int], None]:
    def run(n: int) -> None:
        acquire, release = m.acquire_lock, m.release_lock
        for _ in range(n):
            acquire("k", "h", hold_timeout=hold_timeout)
            release("k", "h")

    return run


def uncontended_async(m: Any, hold_timeout: float | None) -> Callable[[int], None]:
    def run(n: int) -> None:
        async def go() -> None:
            acquire, release = m.aacquire_lock, m.release_lock
            for _ in range(n):
                await acquire("k", "h", hold_timeout=hold_timeout)
                release("k", "h")

        asyncio.run(go())

    return run


def bare_lock(n: int) -> None:
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release
    for _ in range(n):
        acquire()
        release()


def bare_async_lock(n: int) -> None:
    async def go() -> None:
        lock = asyncio.Lock()
        for _ in range(n):
            await lock.acquire()
            lock.release()

    asyncio.run(go())


# ---------------------------------------------------------------- hand-off


def handoff_threads(acquire: Callable[[], object], release: Callable[[], object],
                    waiting: Callable[[], bool], rounds: int = HANDOFFS) -> list[float]:
    """Holder releases at t0; the blocked waiter returns at t1; sample t1 - t0."""
    samples: list[float] = []
    for _ in range(rounds):
        acquire()
        box: list[float] = []
        ready = threading.Event()

        def waiter(box: list[float] = box, ready: threading.Event = ready) -> None:
            ready.set()
            acquire()
            box.append(time.perf_counter())
            release()

        t = threading.Thread(target=waiter)
        t.start()
        ready.wait()
        deadline = time.monotonic() + 1
        while not waiting() and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(0.0005)  # let it settle into its blocking call
        t0 = time.perf_counter()
        release()
        t.join()
        samples.append(box[0] - t0)
    return samples


def handoff_tasks(m: Any | None, rounds: int = TASK_HANDOFFS) -> list[float]:
    async def go() -> list[float]:
        samples = []
        lock = asyncio.Lock()
        for i in range(rounds):
            if m is None:
                await lock.acquire()
            else:
                await m.aacquire_lock("h", "a")
            box: list[float] = []

            async def waiter(box: list[float] = box, i: int = i) -> None:
                if m is None:
                    await lock.acquire()
                    box.append(time.perf_counter())
                    lock.release()
                else:
                    await m.aacquire_lock("h", f"b{i}")
                    box.append(time.perf_counter())
                    m.release_lock("h", f"b{i}")

            task = asyncio.ensure_future(waiter())
            for _ in range(3):
                await asyncio.sleep(0)
            t0 = time.perf_counter()
            if m is None:
                lock.release()
            else:
                m.release_lock("h", "a")
            await task
            samples.append(box[0] - t0)
        return samples

    return asyncio.run(go())


# ---------------------------------------------------------------- contention


def contention(acquire: Callable[[str], object], release: Callable[[str], object],
               threads: int = 8, seconds: float = CONTENTION_SECONDS) -> tuple[float, int]:
    """Acquisitions per second of ``threads`` threads on one key, and overlaps seen."""
    state = {"inside": 0, "overlaps": 0}
    counts = [0] * threads
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        name = f"t{i}"
        barrier.wait()
        n = 0
        while time.monotonic() < stop:
            acquire(name)
            state["inside"] += 1
            if state["inside"] != 1:
                state["overlaps"] += 1
            state["inside"] -= 1
            try:
                release(name)
            except ValueError:  # Prefect's manager: two winners, then one release fails
                state["overlaps"] += 1
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - start), state["overlaps"]


class FairLock:
    """A strictly FIFO lock from threading primitives: the floor for *fair* hand-off."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._queue: list[threading.Lock] = []

    def acquire(self) -> None:
        with self._mutex:
            if not self._held and not self._queue:
                self._held = True
                return
            gate = threading.Lock()
            gate.acquire()
            self._queue.append(gate)
        gate.acquire()  # released by the hand-off: we own the lock

    def release(self) -> None:
        with self._mutex:
            if self._queue:
                self._queue.pop(0).release()
            else:
                self._held = False


# ---------------------------------------------------------------- many holds, expiry


def many_holds(m: Any, n: int = HOLDS) -> tuple[float, float, int]:
    """Time (untraced), then peak memory (traced, a second pass) and threads started."""
    keys = [f"many{i}" for i in range(n)]
    gc.collect()
    threads_before = threading.active_count()
    t0 = time.perf_counter()
    for key in keys:
        m.acquire_lock(key, "h", hold_timeout=60)
    elapsed = time.perf_counter() - t0
    threads = threading.active_count() - threads_before
    for key in keys:
        m.release_lock(key, "h")
    gc.collect()
    tracemalloc.start()
    for key in keys:
        m.acquire_lock(key, "h", hold_timeout=60)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for key in keys:
        m.release_lock(key, "h")
    return elapsed, peak / 2**20, threads


def expiry_lateness(m: Any, rounds: int = EXPIRIES, ttl: float = 0.2) -> list[float]:
    samples = []
    for i in range(rounds):
        m.acquire_lock(f"exp{i}", "a", hold_timeout=ttl)
        granted = time.perf_counter()
        assert m.acquire_lock(f"exp{i}", "b", acquire_timeout=5)
        samples.append(time.perf_counter() - granted - ttl)
        m.release_lock(f"exp{i}", "b")
    return samples


def main() -> None:
    ours = txlock.MemoryLockManager("bench")
    theirs = prefect_memory()
    pname = "prefect MemoryLockManager"
    rows: list[Row] = []
    n = 200_000

    step("uncontended")
    # txlock, Prefect and the floor in alternation (per_op_interleaved), so the ratios of a
    # row are not the luck of one moment on a shared machine.
    fns = {"floor": bare_lock, "ours": uncontended(ours, None), "ours60": uncontended(ours, 60.0)}
    if theirs is not None:
        fns["theirs"] = uncontended(theirs, None)
    sync = per_op_interleaved(fns, n // 4)
    floor = sync["floor"]
    p = sync.get("theirs")
    rows.append(Row("sync acquire+release", "s", sync["ours"], floor, "threading.Lock", p, pname,
                    "<= 0.6x Prefect", p is not None and sync["ours"] <= 0.6 * p))
    # Prefect starts a timer thread per timed hold: a few thousand are enough.
    p60 = per_op(uncontended(theirs, 60.0), 2_000, repeat=3) if theirs else None
    rows.append(Row("sync acquire+release, hold_timeout=60", "s", sync["ours60"], floor, "threading.Lock", p60, pname,
                    ">= 50x faster than Prefect", p60 is not None and p60 / sync["ours60"] >= 50))
    afns = {"floor": bare_async_lock, "ours": uncontended_async(ours, None), "ours60": uncontended_async(ours, 60.0)}
    if theirs is not None:
        afns["theirs"] = uncontended_async(theirs, None)
    a = per_op_interleaved(afns, n // 16)
    ap = a.get("theirs")
    rows.append(Row("async acquire+release", "s", a["ours"], a["floor"], "asyncio.Lock", ap, pname,
                    "<= Prefect", ap is not None and a["ours"] <= ap))
    ap60 = per_op(uncontended_async(theirs, 60.0), 2_000, repeat=3) if theirs else None
    rows.append(Row("async acquire+release, hold_timeout=60", "s", a["ours60"], a["floor"], "asyncio.Lock",
                    ap60, pname))

    step("thread hand-off")
    lock = threading.Lock()
    bare = handoff_threads(lock.acquire, lock.release, lambda: True)

    def queued() -> bool:
        info = ours.inspect("h")
        return info is not None and bool(info.waiters)

    mine = handoff_threads(lambda: ours.acquire_lock("h", f"x{threading.get_ident()}"),
                           lambda: ours.release_lock("h", f"x{threading.get_ident()}"), queued)
    pref = None
    if theirs is not None:
        pref = handoff_threads(lambda: theirs.acquire_lock("h", f"x{threading.get_ident()}"),
                               lambda: theirs.release_lock("h", f"x{threading.get_ident()}"), lambda: True)
    for q in (50, 99):
        rows.append(Row(f"hand-off thread->thread p{q}", "s", pct(mine, q), pct(bare, q), "threading.Lock",
                        pct(pref, q) if pref else None, pname,
                        "p50 <= 2x floor" if q == 50 else "", pct(mine, 50) <= 2 * pct(bare, 50) if q == 50 else None))
    step("task hand-off")
    amine, abare = handoff_tasks(ours), handoff_tasks(None)
    for q in (50, 99):
        rows.append(Row(f"hand-off task->task p{q}", "s", pct(amine, q), pct(abare, q), "asyncio.Lock", None,
                        "n/a (Prefect parks a thread per async waiter)"))

    step("contention")
    fair = FairLock()
    bare_tp, _ = contention(lambda _n: lock.acquire(), lambda _n: lock.release())
    # The FIFO floor and txlock in turn, three short runs each: the better run of each.
    fair_tp = our_tp = 0.0
    our_overlaps = 0
    for _ in range(3):
        fair_tp = max(fair_tp, contention(lambda _n: fair.acquire(), lambda _n: fair.release(),
                                          seconds=CONTENTION_SECONDS / 3)[0])
        tp, overlaps = contention(lambda name: ours.acquire_lock("c", name), lambda name: ours.release_lock("c", name),
                                  seconds=CONTENTION_SECONDS / 3)
        our_tp, our_overlaps = max(our_tp, tp), our_overlaps + overlaps
    pref_tp = pref_overlaps = None
    if theirs is not None:
        # Prefect's manager can strand a waiter after granting two holders at once: bound
        # each wait so the run ends, and count a stranded wait as a broken hand-off.
        pref_tp, pref_overlaps = contention(lambda name: theirs.acquire_lock("c", name, acquire_timeout=0.5),
                                            lambda name: theirs.release_lock("c", name))
    rows.append(Row("8 threads, one key", "ops/s", our_tp, bare_tp, "threading.Lock (unfair)", pref_tp, pname,
                    "exclusion intact", our_overlaps == 0,
                    note=f"overlaps: txlock {our_overlaps}, Prefect {pref_overlaps}", lower_is_better=False,
                    extra={"fifo_floor": fair_tp}))
    rows.append(Row("8 threads, one key, vs a FIFO floor", "ops/s", our_tp, fair_tp,
                    "FIFO lock of threading primitives", None, "",
                    ">= 0.8x FIFO floor, FIFO kept", our_tp >= 0.8 * fair_tp and our_overlaps == 0,
                    note="txlock serves waiters in arrival order", lower_is_better=False))

    step(f"{HOLDS:,} holds")
    t, mib, threads = many_holds(ours)
    pt = pmib = pthreads = None
    if theirs is not None:
        pt, pmib, pthreads = many_holds(theirs)
    rows.append(Row(f"{HOLDS:,} holds with hold_timeout=60: time", "s", t, None, "", pt, pname, "< 100 ms", t < 0.1))
    rows.append(Row(f"{HOLDS:,} holds: peak memory", "MiB", mib, None, "", pmib, pname, "< 20 MiB", mib < 20))
    rows.append(Row(f"{HOLDS:,} holds: extra threads", "", float(threads), None, "",
                    float(pthreads) if pthreads is not None else None, pname, "0", threads == 0))

    step("expiry")
    late = expiry_lateness(ours)
    plate = expiry_lateness(theirs, rounds=PREFECT_EXPIRIES) if theirs is not None else None
    rows.append(Row("expiry lateness, hold_timeout=0.2, p50", "s", pct(late, 50), None, "",
                    pct(plate, 50) if plate else None, pname, "< 5 ms", pct(late, 50) < 0.005))

    report("memory", "Memory backend (threads and tasks of one process)", rows,
           notes="The 8-thread row sets txlock's FIFO hand-off against an unfair `threading.Lock`, whose releasing "
                 "thread re-takes the lock before any sleeper wakes; the FIFO floor row is the fair comparison.")


if __name__ == "__main__":
    main()
