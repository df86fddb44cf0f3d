"""Real Prefect flows whose tasks contend on one SERIALIZABLE transaction key.

Prefect's ephemeral mode runs the API in a temporary local server process. The module
starts one through ``prefect_test_harness`` (Prefect's own test harness: a temporary server
on a temporary database) and every flow of the module uses it, including the task-runner
workers this process spawns, which inherit Prefect's settings from their parent (left to
themselves, each spawned worker would start a temporary server of its own).

Each test uses a cache policy whose key is the task's ``key`` argument, configured with
``isolation_level=SERIALIZABLE`` and the txlock manager under test:

* ``serial``: the tasks refresh the cache, so every body runs, one at a time (the
  enter/exit log shows no overlap);
* ``cached``: the first body computes and commits, every other caller waits on the lock,
  finds the record and gets the same result: the body runs exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _prefect_support import (
    DEADLINE,
    abody,
    assert_serial,
    body,
    gated_transaction,
    key_from_params,
    manager_url,
    read_log,
)
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.flows import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.tasks import task
from prefect.transactions import IsolationLevel

import txlock

# Prefect's API client leaves sockets to the garbage collector (not txlock's: the core
# suite runs with ResourceWarning as an error); scripts/test-prefect ignores them too.
pytestmark = [
    pytest.mark.prefect,
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]

CALLERS = 4
WORKERS = 2
SERIAL_TASKS = 6
MODES = ["serial", "cached"]


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """Prefect's own test harness: one temporary API server and database for the module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return manager_url(backend, request, tmp_path)


@pytest.fixture
def bounded(url: str) -> Iterator[txlock.BaseLockManager]:
    """The manager under test with every wait bounded: a test that would hang fails instead.

    (The raising mode: a wait longer than DEADLINE raises LockTimeout out of the
    transaction rather than letting it run unlocked.)
    """
    m = txlock.from_url(url, acquire_timeout=DEADLINE, raise_on_timeout=True)
    try:
        yield m
    finally:
        m.close()


def contended_task(fn: Any, manager: txlock.BaseLockManager, tmp_path: Path, mode: str) -> Any:
    policy = CachePolicy.from_cache_key_fn(key_from_params).configure(
        isolation_level=IsolationLevel.SERIALIZABLE, lock_manager=manager
    )
    return task(
        fn,
        cache_policy=policy,
        persist_result=True,
        result_storage=tmp_path / "results",  # a Path: a local store Prefect need not save
        refresh_cache=mode == "serial",
    )


def check(results: list[int], log: Path, mode: str, manager: txlock.BaseLockManager, key: str) -> None:
    assert results == [42] * CALLERS
    sections = assert_serial(read_log(log))
    assert sections == (1 if mode == "cached" else CALLERS)
    assert not manager.is_locked(key)


@pytest.mark.parametrize("mode", MODES)
def test_thread_pool_tasks_on_one_key(
    prefect_api: None, bounded: txlock.BaseLockManager, tmp_path: Path, mode: str
) -> None:
    key = f"threads-{uuid.uuid4().hex}"
    log = tmp_path / "sections.log"
    work = contended_task(body, bounded, tmp_path, mode)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=CALLERS))
    def contend() -> list[int]:
        futures = [work.submit(key, str(log), 21) for _ in range(CALLERS)]
        return [f.result(timeout=DEADLINE) for f in futures]

    check(contend(), log, mode, bounded, key)


@pytest.mark.parametrize("mode", MODES)
def test_async_tasks_under_gather_on_one_key(
    prefect_api: None, bounded: txlock.BaseLockManager, tmp_path: Path, mode: str
) -> None:
    # Async tasks run as AsyncTransactions on one event loop: Prefect acquires with
    # aacquire_lock and releases with the *sync* release_lock, on the loop's thread.
    key = f"tasks-{uuid.uuid4().hex}"
    log = tmp_path / "sections.log"
    work = contended_task(abody, bounded, tmp_path, mode)

    @flow
    async def contend() -> list[int]:
        return list(await asyncio.gather(*(work(key, str(log), 21) for _ in range(CALLERS))))

    check(asyncio.run(contend()), log, mode, bounded, key)


def test_process_pool_tasks_on_one_key(prefect_api: None, bounded: txlock.BaseLockManager, tmp_path: Path) -> None:
    # ProcessPoolTaskRunner spawns its workers and cloudpickles each task to them, with its
    # cache policy or arguments: the txlock manager travels by pickle and rebuilds itself
    # from its configuration in the worker. One flow runs both parts so the (slow to
    # start) worker processes serve both.
    if not bounded.capabilities.processes:
        pytest.skip(f"{type(bounded).__name__} does not span processes")
    serial_key, cached_key = f"procs-serial-{uuid.uuid4().hex}", f"procs-cached-{uuid.uuid4().hex}"
    serial_log, cached_log = tmp_path / "serial.log", tmp_path / "cached.log"
    # Tasks that open a SERIALIZABLE transaction themselves. Each waits at a gate until two
    # of them have arrived: the first to arrive blocks its worker until a task starts on the
    # other, so both workers provably run and contend for the key. (One gate for all: the
    # runner hands tasks to its workers in no guaranteed order.)
    serial = task(gated_transaction, cache_policy=NO_CACHE)
    cached = contended_task(body, bounded, tmp_path, "cached")
    common = {"manager": bounded, "key": serial_key, "storage": str(tmp_path / "results"), "log": str(serial_log)}
    gate = tmp_path / "gate"
    gate.mkdir()

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=WORKERS))
    def contend() -> tuple[list[str], list[int]]:
        first = [serial.submit(**common, gate_dir=str(gate), parties=WORKERS) for _ in range(SERIAL_TASKS)]
        second = [cached.submit(cached_key, str(cached_log), 21) for _ in range(CALLERS)]
        return [f.result(timeout=DEADLINE) for f in first], [f.result(timeout=DEADLINE) for f in second]

    serial_results, cached_results = contend()
    events = read_log(serial_log)
    assert assert_serial(events) == SERIAL_TASKS
    assert sorted(serial_results) == sorted(who for event, who in events if event == "enter")
    assert len({who.split(":")[0] for _, who in events}) == WORKERS, f"both workers must have run: {events}"
    assert not bounded.is_locked(serial_key)
    check(cached_results, cached_log, "cached", bounded, cached_key)
