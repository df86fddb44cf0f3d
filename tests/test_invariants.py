"""No two holders are ever inside the critical section: threads, tasks and processes.

Each worker does a deliberately non-atomic read-increment-write inside the lock; any lapse
of exclusion loses an increment, and the enter/exit log shows the overlap.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from pathlib import Path

import pytest

import txlock
from _workers import check_log, critical_section_worker
from conftest import LoopThread, requires


@pytest.mark.parametrize("hold_timeout", [None, 30.0])
def test_threads_never_overlap(manager: txlock.BaseLockManager, hold_timeout: float | None) -> None:
    workers, rounds = 8, 40
    count = 0
    inside = 0
    overlaps = 0
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        nonlocal count, inside, overlaps
        try:
            start.wait()
            for _ in range(rounds):
                assert manager.acquire_lock("k", f"t{index}", acquire_timeout=60, hold_timeout=hold_timeout)
                try:
                    inside += 1
                    if inside != 1:
                        overlaps += 1
                    value = count
                    threading.Event().wait(0)  # let another thread run here if it can: widens the window
                    count = value + 1
                    inside -= 1
                finally:
                    manager.release_lock("k", f"t{index}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert overlaps == 0
    assert count == workers * rounds
    assert not manager.is_locked("k")


def test_tasks_never_overlap(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    tasks, rounds = 12, 15
    state = {"count": 0, "inside": 0, "overlaps": 0}

    async def work(index: int) -> None:
        for _ in range(rounds):
            assert await manager.aacquire_lock("k", f"task{index}", acquire_timeout=60)
            try:
                state["inside"] += 1
                if state["inside"] != 1:
                    state["overlaps"] += 1
                value = state["count"]
                await asyncio.sleep(0)  # every other task runs here: widens the window for an overlap
                state["count"] = value + 1
                state["inside"] -= 1
            finally:
                if index % 2:
                    manager.release_lock("k", f"task{index}")  # Prefect's sync release on the loop
                else:
                    await manager.arelease_lock("k", f"task{index}")

    async def main() -> None:
        await asyncio.gather(*(work(i) for i in range(tasks)))

    loop_thread.run(main(), timeout=120)
    assert state["overlaps"] == 0
    assert state["count"] == tasks * rounds
    assert not manager.is_locked("k")


def test_threads_and_tasks_together_never_overlap(manager: txlock.BaseLockManager, loop_thread: LoopThread) -> None:
    rounds = 20
    state = {"count": 0, "inside": 0, "overlaps": 0}
    guard = threading.Lock()

    def enter() -> int:
        with guard:
            state["inside"] += 1
            if state["inside"] != 1:
                state["overlaps"] += 1
            return state["count"]

    def leave(value: int) -> None:
        with guard:
            state["count"] = value + 1
            state["inside"] -= 1

    def thread_work(index: int) -> None:
        for _ in range(rounds):
            assert manager.acquire_lock("k", f"t{index}", acquire_timeout=60)
            value = enter()
            threading.Event().wait(0)  # let another thread run here if it can: widens the window
            leave(value)
            manager.release_lock("k", f"t{index}")

    async def task_work(index: int) -> None:
        for _ in range(rounds):
            assert await manager.aacquire_lock("k", f"a{index}", acquire_timeout=60)
            value = enter()
            await asyncio.sleep(0)  # the other tasks run here: widens the window for an overlap
            leave(value)
            await manager.arelease_lock("k", f"a{index}")

    async def tasks() -> None:
        await asyncio.gather(*(task_work(i) for i in range(4)))

    threads = [threading.Thread(target=thread_work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    loop_thread.run(tasks(), timeout=120)
    for t in threads:
        t.join(120)
    assert state["overlaps"] == 0
    assert state["count"] == 8 * rounds


@pytest.mark.processes
def test_spawned_processes_never_overlap(url: str, manager: txlock.BaseLockManager, tmp_path: Path) -> None:
    requires(manager, "processes")
    workers, rounds = 4, 60
    counter = tmp_path / "counter"
    counter.write_text("0")
    log = tmp_path / "sections.log"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = [
            pool.apply_async(critical_section_worker, (url, "k", rounds, str(counter), str(log), i))
            for i in range(workers)
        ]
        done = [r.get(timeout=240) for r in results]
    assert sum(done) == workers * rounds
    assert check_log(log.read_text().splitlines()) == workers * rounds
    assert int(counter.read_text()) == workers * rounds
    assert not manager.is_locked("k")
