"""Shared pieces of the Prefect group.

Spawned processes (Prefect's ``ProcessPoolTaskRunner`` workers, our own worker pools and
the process killed by the crash test) import this module by name, so it must stay cheap to
import and free of pytest fixtures: Prefect is imported inside the functions that need it.

Critical sections write an ``enter``/``exit`` line to a log file (one ``os.write`` of an
``O_APPEND`` descriptor per line, atomic on a local file system), and the test reads the
log back and checks that no section began before the previous one ended. A section stays
open for ``WORK`` seconds of simulated work: that sleep orders nothing, it only gives a
broken lock the time to let a second caller in, where the log would show it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _support import eventually

if TYPE_CHECKING:
    import pytest
    from prefect.results import ResultStore

    import txlock

# Seconds a critical section stays open (simulated work, see the module docstring).
WORK = 0.02
# How long a polled condition may take before a test gives up.
DEADLINE = 60.0


def _prefect_env_defaults() -> None:
    # Processes started by the tests (and Prefect's temporary server) inherit these; the
    # test process itself gets them from scripts/test-prefect.
    if "PREFECT_HOME" not in os.environ:
        import atexit
        import shutil
        import tempfile

        home = tempfile.mkdtemp(prefix="txlock-prefect-home-")
        os.environ["PREFECT_HOME"] = home
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")


_prefect_env_defaults()


# ---------------------------------------------------------------- test-process helpers


def manager_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``url_for`` from the root conftest, turning a missing cluster fixture into a skip."""
    import pytest

    from conftest import unavailable, url_for

    if backend == "redis_cluster":
        try:
            request.getfixturevalue("redis_cluster_url")
        except pytest.FixtureLookupError:
            unavailable("no redis_cluster_url fixture (the private Redis cluster is not set up)")
    return url_for(backend, request, tmp_path)


def result_store(manager: txlock.BaseLockManager | Any, storage: str | Path) -> ResultStore:
    """A Prefect result store locking with ``manager`` and writing under ``storage``.

    An explicit local result storage keeps every test (and every spawned process) off the
    default storage and off the Prefect API.
    """
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    return ResultStore(lock_manager=manager, result_storage=LocalFileSystem(basepath=str(storage)))


def read_log(path: str | Path) -> list[tuple[str, str]]:
    """The ``(event, who)`` pairs of a section log, in order."""
    p = Path(path)
    if not p.exists():
        return []
    pairs = []
    for line in p.read_text().splitlines():
        event, _, who = line.partition(" ")
        pairs.append((event, who))
    return pairs


def assert_serial(events: list[tuple[str, str]]) -> int:
    """Fail if two sections overlap in ``events``; return how many sections ran."""
    inside: str | None = None
    sections = 0
    for index, (event, who) in enumerate(events):
        if event == "enter":
            assert inside is None, f"event {index}: {who} entered while {inside} was inside: {events}"
            inside = who
            sections += 1
        else:
            assert event == "exit", events
            assert inside == who, f"event {index}: {who} left but {inside} was inside: {events}"
            inside = None
    assert inside is None, f"{inside} never left: {events}"
    return sections


# ---------------------------------------------------------------- inside any process


def _who() -> str:
    return f"{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


def _append(log: str, event: str, who: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {who}\n".encode())
    finally:
        os.close(fd)


def section(log: str) -> str:
    """A critical section: log enter, simulated work, log exit."""
    who = _who()
    _append(log, "enter", who)
    time.sleep(WORK)
    _append(log, "exit", who)
    return who


async def asection(log: str) -> str:
    """The async form of :func:`section` (its work yields to the event loop)."""
    who = _who()
    _append(log, "enter", who)
    await asyncio.sleep(WORK)
    _append(log, "exit", who)
    return who


def key_from_params(context: Any, parameters: dict[str, Any]) -> str:
    """A ``cache_key_fn``: the transaction key is the task's ``key`` argument."""
    return str(parameters["key"])


def body(key: str, log: str, value: int) -> int:
    """A task body: one critical section, then a result every caller can check."""
    section(log)
    return value * 2


async def abody(key: str, log: str, value: int) -> int:
    """The async task body."""
    await asection(log)
    return value * 2


def warm() -> None:
    """Pool initializer: pay Prefect's import once per worker process."""
    import prefect.results
    import prefect.transactions  # noqa: F401


def gate(gate_dir: str, parties: int) -> None:
    """A barrier across processes: announce arrival, wait until ``parties`` have arrived."""
    Path(gate_dir, _who().replace(":", "-")).touch()
    eventually(lambda: len(os.listdir(gate_dir)) >= parties, DEADLINE, f"{parties} processes at the gate")


def serial_transactions(
    *, manager: txlock.BaseLockManager, key: str, storage: str, log: str, rounds: int, gate_dir: str, parties: int
) -> int:
    """Run ``rounds`` SERIALIZABLE transactions on ``key`` that always run their body."""
    from prefect.transactions import IsolationLevel, transaction

    store = result_store(manager, storage)
    gate(gate_dir, parties)
    for r in range(rounds):
        with transaction(key, store=store, isolation_level=IsolationLevel.SERIALIZABLE, overwrite=True) as txn:
            section(log)
            txn.stage(r)
    return rounds


def gated_transaction(
    *, manager: txlock.BaseLockManager, key: str, storage: str, log: str, gate_dir: str, parties: int
) -> str:
    """Wait at the gate, then one SERIALIZABLE transaction on ``key`` that runs its body.

    Run as a Prefect task, the transaction is nested in the task run's own transaction:
    with the default lazy commit it commits, and releases its lock, when the task run ends.
    (So one task must not open two transactions on one key: the second would wait for the
    first, which is still held, forever.)
    """
    from prefect.transactions import IsolationLevel, transaction

    store = result_store(manager, storage)
    gate(gate_dir, parties)
    with transaction(key, store=store, isolation_level=IsolationLevel.SERIALIZABLE, overwrite=True) as txn:
        who = section(log)
        txn.stage(who)
    return who


def cached_transaction(
    *, manager: txlock.BaseLockManager, key: str, storage: str, log: str, gate_dir: str, parties: int
) -> str:
    """Compute-once: the first transaction computes and commits, the others read its record."""
    from prefect.transactions import IsolationLevel, transaction

    store = result_store(manager, storage)
    gate(gate_dir, parties)
    with transaction(key, store=store, isolation_level=IsolationLevel.SERIALIZABLE) as txn:
        if txn.is_committed():
            record = txn.read()
            assert record is not None
            return str(record.result)
        value = section(log)
        txn.stage(value)
    return value


def hold_and_hang(manager: txlock.BaseLockManager, key: str, storage: str, ready: str) -> None:
    """Enter a SERIALIZABLE transaction, say so, and never leave (the test SIGKILLs us)."""
    from prefect.transactions import IsolationLevel, transaction

    store = result_store(manager, storage)
    with transaction(key, store=store, isolation_level=IsolationLevel.SERIALIZABLE):
        Path(ready).write_text(str(os.getpid()))
        threading.Event().wait()
