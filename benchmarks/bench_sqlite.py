"""Benchmarks of the SQLite backend, beside the physical floor and Prefect's nearest local peer.

Rows:

* uncontended acquire+release, beside a bare ``INSERT`` + ``DELETE`` on the same database
  file with the same settings (WAL, ``synchronous=NORMAL``), and Prefect's
  ``FileSystemLockManager``;
* cross-process hand-off latency (release in one process -> acquire returns in another),
  beside a blocking ``flock`` hand-off (the kernel's own wake-up) and Prefect;
* 4-process contention throughput on one key, with an exclusion check (an ``O_EXCL``
  marker file created inside the critical section), beside 4 processes doing bare
  ``INSERT`` + ``DELETE`` pairs and Prefect;
* ``list_locks`` on 10,000 held keys, beside a bare ``SELECT`` of 10,000 rows.

Run with the benchmark environment (Prefect installed): ``python benchmarks/bench_sqlite.py``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import txlock
from _common import Op, contend, entered, flock_ops, handoff, manager_ops, prefect_fs, prefect_per_op, scratch
from _harness import Row, floor_and_ours, pct, report
from _sizes import CONTENTION_SECONDS, HANDOFFS, MANY_KEYS, sized

PREFECT_HANDOFFS = sized(30, 4)
LIST_KEYS = MANY_KEYS


def manager(kind: str, target: str) -> Any:
    """txlock's manager for the URL ``target``, or Prefect's for the directory ``target``."""
    return txlock.from_url(target) if kind == "txlock" else prefect_fs(target)


def peer(measured: object) -> str:
    """The Prefect column's label: its nearest local peer, or why there is no number."""
    return "FileSystemLockManager" if measured is not None else "prefect not installed"


def floor_connection(path: str) -> sqlite3.Connection:
    cx = sqlite3.connect(path, isolation_level=None, timeout=30)
    cx.execute("PRAGMA journal_mode = WAL")
    cx.execute("PRAGMA synchronous = NORMAL")
    cx.execute("CREATE TABLE IF NOT EXISTS floor (k BLOB PRIMARY KEY, h BLOB) WITHOUT ROWID")
    return cx


# ---------------------------------------------------------------------- uncontended


def uncontended(db: str, tmp: Path) -> Row:
    m = txlock.SQLiteLockManager(db)
    cx = floor_connection(db)

    def floor(n: int) -> None:
        execute = cx.execute
        for _ in range(n):
            execute("INSERT INTO floor (k, h) VALUES (?, ?)", (b"k", b"me"))
            execute("DELETE FROM floor WHERE k = ?", (b"k",))

    t_floor, t_ours = floor_and_ours(floor, m, "bench:k", 5000)
    t_prefect = prefect_per_op(prefect_fs(tmp / "prefect-uncontended"), "k", 1000)
    m.close()
    cx.close()
    return Row(
        "uncontended acquire+release", "s", t_ours, t_floor, "INSERT+DELETE, WAL, synchronous=NORMAL",
        t_prefect, peer(t_prefect),
    ).within(1.5)


# ---------------------------------------------------------------------- hand-off


def handoff_ops(kind: str, target: str, role: str) -> tuple[Op, Op, Op]:
    """What each side of a hand-off does (see ``_common.handoff``): ``target`` is the
    database URL, Prefect's directory or the ``flock`` file."""

    def settle() -> None:
        time.sleep(0.003)  # let the child block in acquire (a benchmark may sleep)

    if kind == "flock":
        return (*flock_ops(target), settle)
    acquire, release = manager_ops(manager(kind, target), "handoff", role)
    if kind == "prefect" and role == "parent":
        return _past_torn_reads(acquire), release, settle
    return acquire, release, settle


def _past_torn_reads(acquire: Op) -> Op:
    """``acquire``, tried again while it raises: Prefect reads records half-written by the
    other process."""

    def retrying() -> None:
        while True:
            try:
                acquire()
                return
            except ValueError:
                pass

    return retrying


# ---------------------------------------------------------------------- contention


def _contender(kind: str, target: str, marker: str, seconds: float, start: Any, out: Any) -> None:
    ops = violations = errors = 0
    holder = f"p{os.getpid()}"
    if kind == "floor":
        cx = floor_connection(target)
        key = holder.encode()
        acquire = lambda: cx.execute("INSERT INTO floor (k, h) VALUES (?, ?)", (key, key)) and True  # noqa: E731
        release = lambda: cx.execute("DELETE FROM floor WHERE k = ?", (key,))  # noqa: E731
    else:
        acquire, release = manager_ops(manager(kind, target), "contended", holder)
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            acquire()
            if kind != "floor" and not entered(marker):
                violations += 1
            release()
            ops += 1
        except Exception:  # Prefect's manager raises on torn records under contention
            errors += 1
    out.put((ops, violations, errors))


def contention(kind: str, target: str, marker: str, procs: int = 4) -> tuple[Any, ...]:
    """(operations per second, exclusion violations, errors) of ``procs`` processes."""
    return contend(_contender, (kind, target, marker, CONTENTION_SECONDS), procs, CONTENTION_SECONDS)


# ---------------------------------------------------------------------- list_locks


def listing(db: str) -> Row:
    m = txlock.SQLiteLockManager(db)
    for i in range(LIST_KEYS):
        m.acquire_lock(f"list:{i:05d}", "lister")
    cx = floor_connection(db)
    cx.execute("CREATE TABLE IF NOT EXISTS floor_list (k BLOB PRIMARY KEY, h BLOB, t INTEGER) WITHOUT ROWID")
    rows = [(b"%05d" % i, b"h", i) for i in range(LIST_KEYS)]
    cx.executemany("INSERT OR REPLACE INTO floor_list VALUES (?, ?, ?)", rows)
    t_ours = min(_timed(lambda: m.list_locks("list:")) for _ in range(5))
    t_floor = min(_timed(lambda: cx.execute("SELECT * FROM floor_list ORDER BY k").fetchall()) for _ in range(5))
    assert len(m.list_locks("list:")) == LIST_KEYS
    m.close()
    cx.close()
    return Row(
        f"list_locks on {LIST_KEYS:,} held keys", "s", t_ours, t_floor, f"SELECT of {LIST_KEYS:,} rows",
        None, "Prefect's managers cannot list", target="well under 1 s", met=t_ours < 0.25,
    )


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    rows = []
    with scratch("sqlite") as tmp:
        db = str(tmp / "locks.db")
        rows.append(uncontended(db, tmp))

        url = f"sqlite://{db}"
        ours = handoff(handoff_ops, "txlock", url, HANDOFFS)
        floor = handoff(handoff_ops, "flock", str(tmp / "flock"), HANDOFFS)
        theirs = None
        if prefect_fs(tmp) is not None:
            (tmp / "prefect-handoff").mkdir()
            theirs = handoff(handoff_ops, "prefect", str(tmp / "prefect-handoff"), PREFECT_HANDOFFS)
        rows.append(Row(
            "cross-process hand-off p50", "s", pct(ours, 50), pct(floor, 50), "blocking flock hand-off",
            None if theirs is None else pct(theirs, 50), peer(theirs),
            target="< 5 ms", met=pct(ours, 50) < 0.005,
            extra={"txlock_p99": pct(ours, 99), "floor_p99": pct(floor, 99)},
        ))

        marker = str(tmp / "inside")
        ops, violations, errors = contention("txlock", url, marker)
        f_ops, _, _ = contention("floor", db, marker)
        p_ops = p_violations = p_errors = None
        if prefect_fs(tmp) is not None:
            (tmp / "prefect-contention").mkdir()
            p_ops, p_violations, p_errors = contention("prefect", str(tmp / "prefect-contention"), marker + "-p")
        note = f"txlock: {violations} exclusion violations"
        if p_ops is not None:
            note += f"; Prefect: {p_violations} violations, {p_errors} errors"
        rows.append(Row(
            "4-process contention, one key", "ops/s", ops, f_ops, "4 processes doing INSERT+DELETE",
            p_ops, peer(p_ops),
            target="0 violations", met=violations == 0 and errors == 0, note=note, lower_is_better=False,
        ))

        rows.append(listing(str(tmp / "list.db")))
    report("sqlite", "SQLite backend", rows, notes=(
        "Hand-off: one process releases, a spawned process blocked in acquire takes the lock; "
        "latency measured on CLOCK_MONOTONIC across processes. Contention: each process creates an "
        "O_EXCL marker file inside the critical section, so an exclusion violation is counted, never missed."
    ))


if __name__ == "__main__":
    main()
