"""Independent OS processes running Prefect transactions on one key, and a crash inside one.

The workers are spawned (not forked) processes, so each starts from nothing: the txlock
manager reaches it by pickle and rebuilds itself from its configuration, exactly as a
manager travels to a Prefect worker. A module-wide pool of warm workers (Prefect already
imported) serves every backend; the crash test spawns a process of its own, since a
SIGKILL would break the pool.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from _prefect_support import (
    DEADLINE,
    assert_serial,
    cached_transaction,
    hold_and_hang,
    manager_url,
    read_log,
    result_store,
    serial_transactions,
    warm,
)
from prefect.transactions import IsolationLevel, transaction

import txlock
from _support import eventually

pytestmark = [pytest.mark.prefect, pytest.mark.processes]

WORKERS = 3
ROUNDS = 3

# How long each backend may take to free the holds of a SIGKILLed process, as documented:
# file and SQLite see the process's flock vanish (docs/file.md: milliseconds, 50 ms without
# inotify; docs/sqlite.md: at once, 1 s safety net for waiters); Redis and PostgreSQL end
# the process's holds at most `liveness` seconds after its last heartbeat (the manager's
# `liveness` attribute; docs/redis.md and docs/postgres.md, "Crash recovery").
RECOVERY = {"file": 0.05, "sqlite": 1.0}
# Added to every bound for a loaded machine (scheduling delays, the store's round trips,
# Prefect's own work before it acquires); CI machines shared with other jobs need seconds.
SLACK = 5.0


def recovery_bound(backend: str, manager: txlock.BaseLockManager) -> float:
    liveness = getattr(manager, "liveness", None)
    if isinstance(liveness, (int, float)):
        return float(liveness)
    return RECOVERY[backend]


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return manager_url(backend, request, tmp_path)


@pytest.fixture
def spanning(url: str) -> Iterator[txlock.BaseLockManager]:
    """The manager under test, for backends whose holds span processes, with every wait
    bounded (the raising mode), so that a test that would hang fails instead."""
    m = txlock.from_url(url, acquire_timeout=DEADLINE, raise_on_timeout=True)
    try:
        if not m.capabilities.processes:
            pytest.skip(f"{type(m).__name__} does not span processes")
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=WORKERS, mp_context=context, initializer=warm) as executor:
        yield executor


def test_independent_processes_serialize_their_transactions(
    pool: ProcessPoolExecutor, spanning: txlock.BaseLockManager, tmp_path: Path
) -> None:
    key, log, gate = f"procs-{uuid.uuid4().hex}", tmp_path / "sections.log", tmp_path / "gate"
    gate.mkdir()
    jobs = [
        pool.submit(
            serial_transactions,
            manager=spanning,
            key=key,
            storage=str(tmp_path / "results"),
            log=str(log),
            rounds=ROUNDS,
            gate_dir=str(gate),
            parties=WORKERS,
        )
        for _ in range(WORKERS)
    ]
    assert [job.result(timeout=DEADLINE) for job in jobs] == [ROUNDS] * WORKERS
    events = read_log(log)
    assert assert_serial(events) == WORKERS * ROUNDS
    assert len({who.split(":")[0] for _, who in events}) == WORKERS, "every worker process ran"
    assert not spanning.is_locked(key)


def test_independent_processes_compute_once(
    pool: ProcessPoolExecutor, spanning: txlock.BaseLockManager, tmp_path: Path
) -> None:
    key, log, gate = f"once-{uuid.uuid4().hex}", tmp_path / "sections.log", tmp_path / "gate"
    gate.mkdir()
    jobs = [
        pool.submit(
            cached_transaction,
            manager=spanning,
            key=key,
            storage=str(tmp_path / "results"),
            log=str(log),
            gate_dir=str(gate),
            parties=WORKERS,
        )
        for _ in range(WORKERS)
    ]
    values = {job.result(timeout=DEADLINE) for job in jobs}
    assert assert_serial(read_log(log)) == 1
    assert len(values) == 1, f"every process must get the one computed value: {values}"
    assert not spanning.is_locked(key)


def test_sigkilled_holder_frees_the_key_within_the_recovery_bound(
    backend: str, url: str, spanning: txlock.BaseLockManager, tmp_path: Path
) -> None:
    key, ready, storage = f"crash-{uuid.uuid4().hex}", tmp_path / "ready", str(tmp_path / "results")
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=hold_and_hang, args=(spanning, key, storage, str(ready)), daemon=True)
    worker.start()
    try:
        eventually(lambda: ready.exists() or not worker.is_alive(), DEADLINE, "the worker to enter its transaction")
        assert worker.is_alive(), f"worker exited with {worker.exitcode} before entering"
        assert spanning.is_locked(key), f"the worker is inside its transaction, yet {key!r} reads as free"
        os.kill(worker.pid or 0, signal.SIGKILL)
        worker.join(DEADLINE)
        assert worker.exitcode == -signal.SIGKILL
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join()

    # A Prefect transaction on the key must get in within the documented bound. The
    # raising mode turns "not within the bound" into an error instead of running unlocked.
    bound = recovery_bound(backend, spanning)
    bounded = txlock.from_url(url, acquire_timeout=bound + SLACK, raise_on_timeout=True)
    started = time.monotonic()
    try:
        with transaction(key, store=result_store(bounded, storage), isolation_level=IsolationLevel.SERIALIZABLE) as txn:
            assert bounded.is_lock_holder(key, txn._holder)
            txn.stage("after the crash")
    except txlock.LockTimeout:
        pytest.fail(
            f"{backend}: the key of the SIGKILLed worker (pid {worker.pid}) was not free within "
            f"{bound:g}s + {SLACK:g}s; it is still held: {bounded.inspect(key)}"
        )
    finally:
        bounded.close()
    waited = time.monotonic() - started
    assert txn.is_committed()
    assert not spanning.is_locked(key)
    print(f"{backend}: key usable again {waited:.2f}s after the SIGKILL (bound {bound:g}s)")
