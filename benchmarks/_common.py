"""The set-up the benchmark suites share: scratch directories, Prefect's managers, the
acquire/release operations of each side, spawned workers (the cross-process hand-off and
the contention run). Measuring and reporting are in ``_harness``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _harness import Row, acquire_release, per_op, table

#: Workers are spawned (not forked), as separate programs would be.
CTX = mp.get_context("spawn")

#: The table's Prefect columns, and their names in the peers suite, whose rows each set one
#: peer library (in the Prefect fields of ``Row``) beside txlock.
PEER_COLUMNS = ("| Prefect | txlock / Prefect |", "| peer | txlock / peer |")

Op = Callable[[], object]


@contextlib.contextmanager
def scratch(suite: str) -> Iterator[Path]:
    """A temporary directory for one run of ``suite``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"txlock-bench-{suite}-") as name:
        yield Path(name)


def prefect_manager(module: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Prefect's manager ``module.name(*args, **kwargs)``, or None when it is not installed."""
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        return None
    return cls(*args, **kwargs)


def prefect_fs(directory: str | Path) -> Any:
    """Prefect's FileSystemLockManager on ``directory``, or None when Prefect is not installed."""
    return prefect_manager("prefect.locking.filesystem", "FileSystemLockManager", Path(directory))


def prefect_per_op(pm: Any, key: str, n: int) -> float | None:
    """Seconds per uncontended acquire+release of ``key`` on Prefect's manager ``pm`` (best
    of 3 passes of ``n``), or None when ``pm`` is None (Prefect not installed)."""
    return None if pm is None else per_op(acquire_release(pm, key), n, repeat=3)


def manager_ops(m: Any, key: str, holder: str) -> tuple[Op, Op]:
    """``(acquire, release)`` of ``key`` for ``holder`` on the manager ``m``, no options."""
    return (lambda: m.acquire_lock(key, holder)), (lambda: m.release_lock(key, holder))


def flock_ops(path: str) -> tuple[Op, Op]:
    """``(acquire, release)`` of a blocking ``flock`` on ``path``: the kernel's own lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return (lambda: fcntl.flock(fd, fcntl.LOCK_EX)), (lambda: fcntl.flock(fd, fcntl.LOCK_UN))


def entered(marker: str) -> bool:
    """The exclusion check of a critical section: create ``marker`` with ``O_EXCL`` and remove
    it; False when it already existed (another process is inside: an overlap)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker)
    return True


def peer_table(rows: list[Row]) -> str:
    """The markdown table of the peers suite: ``table`` with the Prefect columns named "peer"."""
    return table(rows).replace(*PEER_COLUMNS, 1)


# ---------------------------------------------------------------------- hand-off


#: ``ops(kind, target, role)`` -> ``(acquire, release, settle)`` for ``role`` "parent" or
#: "child"; ``settle()`` waits (parent side) until the child is blocked in its acquire.
HandoffOps = Callable[[str, str, str], tuple[Op, Op, Op]]


def _handoff_child(ops: HandoffOps, kind: str, target: str, conn: Any, rounds: int) -> None:
    acquire, release, _ = ops(kind, target, "child")
    for _ in range(rounds):
        conn.recv()
        conn.send("ready")
        acquire()
        t1 = time.monotonic()
        release()
        conn.send(t1)


def handoff(ops: HandoffOps, kind: str, target: str, rounds: int) -> list[float]:
    """Samples (seconds, ``CLOCK_MONOTONIC`` across processes) of release here -> acquire
    returns in a spawned process that was blocked waiting for it. ``ops`` must be a function
    of the benchmark module (the child imports it by name)."""
    acquire, release, settle = ops(kind, target, "parent")
    here, there = CTX.Pipe()
    child = CTX.Process(target=_handoff_child, args=(ops, kind, target, there, rounds))
    child.start()
    samples = []
    for _ in range(rounds):
        acquire()
        here.send("go")
        assert here.recv() == "ready"
        settle()
        t0 = time.monotonic()
        release()
        samples.append(here.recv() - t0)
    child.join(60)
    return samples


# ---------------------------------------------------------------------- contention


def contend(worker: Callable[..., None], args: tuple[Any, ...], procs: int, seconds: float,
            settle: float | None = None) -> tuple[Any, ...]:
    """Run ``procs`` spawned ``worker(*args, start, out)`` for ``seconds`` each: each waits on
    ``start``, works, and puts a tuple of counts on ``out`` (operations first). ``start`` is a
    barrier of all the workers, or with ``settle`` an event set ``settle`` seconds after they
    start (time to import and connect). Returns (operations per second, the other counts
    summed)."""
    start = CTX.Barrier(procs) if settle is None else CTX.Event()
    out = CTX.Queue()
    workers = [CTX.Process(target=worker, args=(*args, start, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    if settle is not None:
        time.sleep(settle)
        start.set()
    try:
        results = [out.get(timeout=seconds + 120) for _ in workers]
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
                w.join()
    ops, *counts = (sum(column) for column in zip(*results, strict=True))
    return (ops / seconds, *counts)
