"""txlock beside the libraries a user would pick instead, per medium, in one run.

    python benchmarks/bench_peers.py

Peers (benchmark-only dependencies; a peer that is not installed is left out of the table):

* memory: ``threading.Lock`` / ``asyncio.Lock`` (also the floor) and Prefect's MemoryLockManager;
* file: Prefect's FileSystemLockManager, ``filelock``, ``portalocker`` (its default polling
  ``Lock`` and the same with a blocking ``LOCK_EX``); floor: a blocking ``flock``;
* Redis: prefect-redis, redis-py ``Lock`` (sync and asyncio), ``python-redis-lock``,
  ``pottery`` (Redlock on one node); floors: ``SET NX PX`` + ``DEL``, ``LPUSH`` -> ``BLPOP``;
* PostgreSQL: session advisory locks through psycopg (``pg_advisory_lock`` / unlock on one
  connection) and ``pals``; floors: two ``SELECT 1`` round trips, ``NOTIFY`` -> ``LISTEN``.

Rows for each peer, beside txlock (its async API against async peers) and the medium's
floor: uncontended acquire+release; hand-off p50 and p99 (thread -> thread and task ->
task in memory, process -> process elsewhere, the waiter asleep in its acquire when the
holder releases); contended throughput on one key (8 threads in memory, 4 processes
elsewhere) with an exclusion check inside every critical section. A peer that lets two
holders in at once is marked with its overlap count and not ranked.

Redis: ``$TXLOCK_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``), every key under a
fresh run id and deleted afterwards. PostgreSQL: ``$TXLOCK_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); lock ids derive from the run id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import io
import os
import struct
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import bench_memory
import txlock
from _common import (
    PEER_COLUMNS,
    Op,
    contend,
    entered,
    flock_ops,
    handoff,
    manager_ops,
    prefect_fs,
    prefect_manager,
    scratch,
)
from _harness import Row, pct, per_op_interleaved, report, step
from _sizes import CONTENTION_SECONDS, HANDOFFS, sized

REDIS = os.environ.get("TXLOCK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("TXLOCK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Spawned children re-import this module: they inherit the run id through the environment.
RUN = os.environ.setdefault("TXLOCK_BENCH_PEERS_RUN", uuid.uuid4().hex[:8])
NAME = f"peers{RUN}"  # in every Redis key, lock name and PostgreSQL application_name
PROCESSES = 4
THREADS = 8
#: Hand-off rounds of a peer that polls (each round waits out part of a poll interval).
POLLING_HANDOFFS = sized(40, 4)
#: Seconds the holder waits, once the waiter said it is about to acquire, before releasing:
#: for a peer that polls, long enough that the waiter is asleep between two polls; for one
#: that cannot be inspected, long enough to be blocked in its call (as bench_file does).
ASLEEP = 0.003
POLL_SETTLE = 0.15


@dataclass(frozen=True)
class Peer:
    """One lock implementation measured on a medium.

    ``ours`` names the txlock kind the peer is set against (its async API for async peers);
    ``polls`` says its waiters poll (fewer hand-off rounds); ``module`` is what must be
    importable for it to run.
    """

    kind: str
    label: str
    ours: str
    polls: bool = False
    module: str = ""

    def available(self) -> bool:
        """Whether the library behind this peer is installed."""
        return not self.module or importlib.util.find_spec(self.module) is not None


FILE_PEERS = [
    Peer("file:prefect", "Prefect FileSystemLockManager", "file:txlock", polls=True, module="prefect"),
    Peer("file:filelock", "filelock FileLock", "file:txlock", polls=True, module="filelock"),
    Peer("file:portalocker", "portalocker Lock (default: polls every 0.25 s)", "file:txlock", polls=True,
         module="portalocker"),
    Peer("file:portalocker-blocking", "portalocker Lock(flags=LOCK_EX)", "file:txlock", module="portalocker"),
]
REDIS_PEERS = [
    Peer("redis:prefect", "prefect-redis RedisLockManager", "redis:txlock", polls=True, module="prefect_redis"),
    Peer("redis:redis-py", "redis-py Lock", "redis:txlock", polls=True),
    Peer("redis:redis-py-async", "redis-py asyncio Lock (vs txlock async)", "redis:txlock-async", polls=True),
    Peer("redis:python-redis-lock", "python-redis-lock", "redis:txlock", module="redis_lock"),
    Peer("redis:pottery", "pottery Redlock, one node", "redis:txlock", polls=True, module="pottery"),
]
POSTGRES_PEERS = [
    Peer("pg:advisory", "psycopg pg_advisory_lock/unlock", "pg:txlock"),
    Peer("pg:pals", "pals (advisory locks via SQLAlchemy)", "pg:txlock", module="pals"),
]


# ---------------------------------------------------------------------- the operations of each kind


def _redis_url() -> str:
    return f"{REDIS}{'&' if '?' in REDIS else '?'}prefix={NAME}:txlock:"


def _sqlalchemy_url(application_name: str) -> str:
    scheme, rest = POSTGRES.split("://", 1)
    url = f"{scheme.split('+')[0]}+psycopg://{rest}"
    return f"{url}{'&' if '?' in url else '?'}application_name={application_name}"


def _pg_lock_id() -> int:
    """The advisory lock id of this run (a signed 64-bit number from the run id)."""
    return int(struct.unpack("q", hashlib.sha1(NAME.encode()).digest()[:8])[0])


def _redis_client(role: str) -> Any:
    import redis

    return redis.Redis.from_url(REDIS, client_name=f"{NAME}-{role}")


def _redis_blocked(r: Any, role: str) -> Op:
    """Wait until the client named for ``role`` is blocked in a command (``BLPOP``)."""

    def settle() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(c.get("name") == f"{NAME}-{role}" and "b" in c.get("flags", "") for c in r.client_list()):
                return
        raise TimeoutError(f"the {role} never blocked")

    return settle


def _pg_waiting(conn: Any, role: str) -> Op:
    """Wait until the session named for ``role`` waits for a lock in the server."""

    def settle() -> None:
        deadline = time.monotonic() + 10
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
        while time.monotonic() < deadline:
            if conn.execute(query, (f"{NAME}-{role}",)).fetchone()[0]:
                return
        raise TimeoutError(f"the {role} never waited")

    return settle


def _queued(m: Any, key: str) -> Op:
    """Wait until txlock's manager ``m`` reports a waiter on ``key``."""

    def settle() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = m.inspect(key)
            if info is not None and info.waiters:
                return
        raise TimeoutError("no waiter queued")

    return settle


def _sleep(seconds: float) -> Op:
    return lambda: time.sleep(seconds)


def _on_loop(make: Callable[[], tuple[Callable[[], Awaitable[object]], ...]]) -> tuple[Op, Op]:
    """Sync ``(acquire, release)`` driving the async pair ``make()`` returns on a private loop."""
    loop = asyncio.new_event_loop()
    aacquire, arelease = make()[:2]
    return (lambda: loop.run_until_complete(aacquire())), (lambda: loop.run_until_complete(arelease()))


def async_ops(kind: str, holder: str) -> tuple[Callable[[], Awaitable[object]], ...]:
    """``(aacquire, arelease, aclose)`` of an async ``kind``; call it inside the loop that uses them."""
    if kind == "redis:txlock-async":
        m = txlock.from_url(_redis_url())
        return (lambda: m.aacquire_lock("hot", holder)), (lambda: m.arelease_lock("hot", holder)), m.aclose
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(REDIS)
    lock = r.lock(f"{NAME}:rlock-async", timeout=30)
    return lock.acquire, lock.release, r.aclose


def ops(kind: str, target: str, role: str) -> tuple[Op, Op, Op]:
    """``(acquire, release, settle)`` of one lock of ``kind`` for ``role`` (``settle`` is the
    holder's wait, in a hand-off, until the other side is waiting). ``target`` is the scratch
    directory of the file medium; the network media take their servers from the environment.
    This is the ``HandoffOps`` of ``_common.handoff`` and what every contender runs."""
    holder = f"{role}{os.getpid()}"
    medium, name = kind.split(":", 1)
    if medium == "file":
        return (*_file_ops(name, target, holder), _sleep(POLL_SETTLE if name in ("prefect", "filelock",
                                                                               "portalocker") else ASLEEP))
    if medium == "redis":
        return _redis_ops(name, role, holder)
    return _pg_ops(name, role, holder)


def _file_ops(name: str, directory: str, holder: str) -> tuple[Op, Op]:
    path = os.path.join(directory, f"{name}.lock")
    if name == "flock":
        return flock_ops(path)
    if name == "txlock":
        return manager_ops(txlock.FileSystemLockManager(directory), "hot", holder)
    if name == "prefect":
        return manager_ops(prefect_fs(directory), "hot", holder)
    if name == "filelock":
        import filelock

        flock = filelock.FileLock(path)
        return flock.acquire, flock.release
    import portalocker

    if name == "portalocker-blocking":
        plock = portalocker.Lock(path, flags=portalocker.LockFlags.EXCLUSIVE)
    else:
        plock = portalocker.Lock(path, timeout=3600)
    return plock.acquire, plock.release


def _redis_ops(name: str, role: str, holder: str) -> tuple[Op, Op, Op]:
    r = _redis_client(role)
    if name == "setnx":
        key = f"{NAME}:setnx"

        def spin() -> None:
            while not r.set(key, holder, nx=True, px=30000):
                pass

        return spin, (lambda: r.delete(key)), (lambda: None)
    if name == "blpop":  # the floor of a hand-off: the child's BLPOP waits for the parent's LPUSH
        signal = f"{NAME}:signal"
        if role == "child":
            return (lambda: r.blpop([signal], 0)), (lambda: None), (lambda: None)
        return (lambda: None), (lambda: r.lpush(signal, b"go")), _redis_blocked(r, "child")
    if name == "txlock":
        m = txlock.from_url(_redis_url())
        return (*manager_ops(m, "hot", holder), _queued(m, "hot"))
    if name == "txlock-async":
        acquire, release = _on_loop(lambda: async_ops("redis:txlock-async", holder))
        probe = txlock.from_url(_redis_url())
        return acquire, release, _queued(probe, "hot")
    if name == "prefect":
        pm = prefect_manager("prefect_redis.locking", "RedisLockManager", connection_url=REDIS)
        return (*manager_ops(pm, f"{NAME}:prefect", holder), _sleep(POLL_SETTLE))
    if name == "redis-py":
        lock = r.lock(f"{NAME}:rlock", timeout=30)
        return lock.acquire, lock.release, _sleep(POLL_SETTLE)
    if name == "redis-py-async":
        return (*_on_loop(lambda: async_ops("redis:redis-py-async", holder)), _sleep(POLL_SETTLE))
    if name == "python-redis-lock":
        import redis_lock

        rlock = redis_lock.Lock(r, f"{NAME}:prl", expire=30)
        return rlock.acquire, rlock.release, _redis_blocked(r, "child")
    from pottery import Redlock

    redlock = Redlock(key=f"{NAME}:pottery", masters={r}, auto_release_time=30)
    return redlock.acquire, redlock.release, _sleep(POLL_SETTLE)


def _pg_ops(name: str, role: str, holder: str) -> tuple[Op, Op, Op]:
    import psycopg

    app = f"{NAME}-{role}"
    if name == "pals":
        import pals

        locker = pals.Locker(NAME, _sqlalchemy_url(app))
        lock = locker.lock("hot", acquire_timeout=3_600_000)
        monitor = psycopg.connect(POSTGRES, autocommit=True) if role == "parent" else None
        return lock.acquire, lock.release, _pg_waiting(monitor, "child") if monitor else (lambda: None)
    if name == "txlock":
        m = txlock.PostgresLockManager(POSTGRES, prefix=f"{NAME}:")
        return (*manager_ops(m, "hot", holder), _queued(m, "hot"))
    conn = psycopg.connect(POSTGRES, autocommit=True, application_name=app)
    if name == "roundtrips":
        return (lambda: conn.execute("SELECT 1", prepare=True)), (lambda: conn.execute("SELECT 1", prepare=True)), (
            lambda: None)
    if name == "notify":  # the floor of a hand-off: the parent's NOTIFY wakes the child's LISTEN
        channel = f"{NAME}_handoff"
        if role == "child":
            conn.execute(f"LISTEN {channel}")

            def heard() -> None:
                for _ in conn.notifies(stop_after=1):
                    pass

            return heard, (lambda: None), (lambda: None)
        return (lambda: None), (lambda: conn.execute(f"NOTIFY {channel}")), _sleep(ASLEEP)
    lock_id = _pg_lock_id()
    acquire = "SELECT pg_advisory_lock(%s)"
    release = "SELECT pg_advisory_unlock(%s)"
    return ((lambda: conn.execute(acquire, (lock_id,), prepare=True)),
            (lambda: conn.execute(release, (lock_id,), prepare=True)), _pg_waiting(conn, "child"))


# ---------------------------------------------------------------------- the three measurements


@dataclass
class Figures:
    """What one kind measured: seconds per uncontended pair, hand-off samples, contention."""

    uncontended: float | None = None
    handoffs: list[float] | None = None
    throughput: float | None = None
    overlaps: int = 0
    errors: int = 0


def uncontended_fn(kind: str, target: str) -> Callable[[int], None]:
    """``fn(n)``: ``n`` uncontended acquire+release pairs of ``kind`` (async kinds in one loop)."""
    if kind.endswith("-async"):

        def run_async(k: int) -> None:
            async def go() -> None:
                aacquire, arelease, aclose = async_ops(kind, "solo")
                for _ in range(k):
                    await aacquire()
                    await arelease()
                await aclose()

            asyncio.run(go())

        return run_async
    acquire, release, _ = ops(kind, target, "solo")

    def run(k: int) -> None:
        for _ in range(k):
            acquire()
            release()

    return run


def _contender(kind: str, target: str, marker: str, seconds: float, start: Any, out: Any) -> None:
    """One contending process: lock, check exclusion with an ``O_EXCL`` marker, unlock."""
    acquire, release, _ = ops(kind, target, "c")
    n = overlaps = errors = 0
    start.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            acquire()
        except Exception:  # a peer that gives up or fails: counted, not fatal
            errors += 1
            continue
        if not entered(marker):
            overlaps += 1
        try:
            release()
        except Exception:
            errors += 1
        n += 1
    out.put((n, overlaps, errors))


def contention(kind: str, target: str) -> tuple[float, int, int]:
    """(operations per second, overlaps, errors) of PROCESSES processes on one key."""
    with scratch("peers-marker") as tmp:
        args = (kind, target, str(tmp / "inside"), CONTENTION_SECONDS)
        # The start is given 1.5 s after the spawn: let every process import and connect.
        ops_per_s, overlaps, errors = contend(_contender, args, PROCESSES, CONTENTION_SECONDS, settle=1.5)
    return ops_per_s, overlaps, errors


def measure(kind: str, target: str, rounds: int) -> Figures:
    """The hand-off and contention figures of ``kind``, one after the other."""
    step(kind)
    figures = Figures(handoffs=handoff(ops, kind, target, rounds))
    figures.throughput, figures.overlaps, figures.errors = contention(kind, target)
    return figures


# ---------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Floors:
    """The medium's floors of the three measurements, and their names."""

    uncontended: float | None
    uncontended_name: str
    handoffs: list[float] | None
    handoff_name: str
    throughput: float | None
    throughput_name: str


def peer_rows(medium: str, peers: list[tuple[Peer, Figures]], figures: dict[str, Figures], floors: Floors) -> list[Row]:
    """Rows of ``medium``, grouped by measurement, one per peer, txlock's counterpart beside it."""
    rows: list[Row] = []

    def label(peer: Peer, theirs: Figures) -> str:
        return peer.label + (f" [BROKE EXCLUSION: {theirs.overlaps} overlaps, not ranked]" if theirs.overlaps else "")

    def faster(ours: float, theirs: float | None, peer_broken: bool, ours_broken: bool) -> bool | None:
        if ours_broken:
            return False
        return True if peer_broken else (None if theirs is None else ours <= theirs)

    for peer, theirs in peers:
        ours = figures[peer.ours]
        assert ours.uncontended is not None
        rows.append(Row(f"{medium}: uncontended acquire+release", "s", ours.uncontended, floors.uncontended,
                        floors.uncontended_name, theirs.uncontended, label(peer, theirs), "best correct",
                        faster(ours.uncontended, theirs.uncontended, theirs.overlaps > 0, ours.overlaps > 0)))
    for q in (50, 99):
        for peer, theirs in peers:
            ours = figures[peer.ours]
            assert ours.handoffs is not None and theirs.handoffs is not None
            mine, other = pct(ours.handoffs, q), pct(theirs.handoffs, q)
            floor = pct(floors.handoffs, q) if floors.handoffs else None
            rows.append(Row(f"{medium}: hand-off p{q}", "s", mine, floor, floors.handoff_name, other,
                            label(peer, theirs), "best correct",
                            faster(mine, other, theirs.overlaps > 0, ours.overlaps > 0),
                            note=f"{len(theirs.handoffs)} peer rounds"))
    for peer, theirs in peers:
        ours = figures[peer.ours]
        assert ours.throughput is not None
        broken = theirs.overlaps > 0
        met = ours.overlaps == 0 and (broken or theirs.throughput is None or ours.throughput >= theirs.throughput)
        note = f"overlaps: txlock {ours.overlaps}, peer {theirs.overlaps}"
        if ours.errors or theirs.errors:
            note += f"; exceptions: txlock {ours.errors}, peer {theirs.errors}"
        rows.append(Row(f"{medium}: contention on one key", "ops/s", ours.throughput, floors.throughput,
                        floors.throughput_name, None if broken else theirs.throughput, label(peer, theirs),
                        "best correct, 0 overlaps", met, note=note, lower_is_better=False,
                        extra={"peer_overlaps": theirs.overlaps, "peer_throughput": theirs.throughput or 0.0}))
    return rows


def network_medium(medium: str, peers: list[Peer], ours: list[str], target: str, n: int,
                   floor_kinds: tuple[str, str, str | None], floor_names: tuple[str, str, str]) -> list[Row]:
    """Measure txlock (``ours``), the floors and every installed peer of a process medium."""
    present = [p for p in peers if p.available()]
    unc_kind, handoff_kind, contention_kind = floor_kinds
    step(f"{medium} uncontended")
    # In alternation (round 1 of each, round 2 of each, ...): a noisy moment hits all alike.
    kinds = [*ours, *(p.kind for p in present), unc_kind]
    best = per_op_interleaved({kind: uncontended_fn(kind, target) for kind in kinds}, n, rounds=5)
    figures = {kind: measure(kind, target, HANDOFFS) for kind in ours}
    theirs = [(p, measure(p.kind, target, POLLING_HANDOFFS if p.polls else HANDOFFS)) for p in present]
    for kind, f in [*figures.items(), *((p.kind, f) for p, f in theirs)]:
        f.uncontended = best[kind]
    step(f"{medium} floors")
    floors = Floors(
        best[unc_kind], floor_names[0],
        handoff(ops, handoff_kind, target, HANDOFFS), floor_names[1],
        contention(contention_kind, target)[0] if contention_kind else None, floor_names[2],
    )
    return peer_rows(medium, theirs, figures, floors)


def file_rows() -> list[Row]:
    with scratch("peers") as tmp:
        return network_medium("file", FILE_PEERS, ["file:txlock"], str(tmp), 2000,
                              ("file:flock", "file:flock", "file:flock"),
                              ("blocking flock + unlock, open fd", "blocking flock hand-off",
                               f"{PROCESSES} processes on a bare flock"))


def redis_rows() -> list[Row]:
    try:
        return network_medium("redis", REDIS_PEERS, ["redis:txlock", "redis:txlock-async"], "", 1000,
                              ("redis:setnx", "redis:blpop", "redis:setnx"),
                              ("SET NX PX + DEL (2 round trips)", "LPUSH -> BLPOP between processes",
                               f"{PROCESSES} processes spinning on SET NX PX + DEL"))
    finally:
        r = _redis_client("cleanup")
        names = list(r.scan_iter(match=f"*{NAME}*", count=1000))
        for i in range(0, len(names), 1000):
            r.delete(*names[i : i + 1000])
        r.close()


def postgres_rows() -> list[Row]:
    return network_medium("postgres", POSTGRES_PEERS, ["pg:txlock"], "", 500,
                          ("pg:roundtrips", "pg:notify", None),
                          ("2 round trips (SELECT 1 twice)", "NOTIFY -> LISTEN between processes", ""))


#: A bound on each wait of the memory contention run (Prefect's manager can strand a waiter).
TIMEOUT = 0.5


def threads_contention(acquire: Callable[[str], object], release: Callable[[str], object],
                       threads: int = THREADS, seconds: float = bench_memory.CONTENTION_SECONDS,
                       ) -> tuple[float, int, int, int]:
    """bench_memory's contention run, with the waits bounded: (acquisitions per second,
    overlaps, acquires that timed out, exceptions). ``acquire(name)`` returns False on a
    timeout (that thread does not enter); a critical section entered while another thread
    is inside is an overlap; a release that raises is an exception, not an overlap."""
    state = {"inside": 0, "overlaps": 0, "timeouts": 0, "errors": 0}
    counts = [0] * threads
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        holder = f"t{i}"
        barrier.wait()
        n = 0
        while time.monotonic() < stop:
            if acquire(holder) is False:
                state["timeouts"] += 1
                continue
            state["inside"] += 1
            if state["inside"] != 1:
                state["overlaps"] += 1
            state["inside"] -= 1
            try:
                release(holder)
            except ValueError:
                state["errors"] += 1
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in workers:
        t.join()
    return sum(counts) / (time.monotonic() - start), state["overlaps"], state["timeouts"], state["errors"]


def memory_rows() -> list[Row]:
    """Memory: txlock against the bare locks (floor and peer at once) and Prefect's manager,
    with bench_memory's measurements."""
    ours = txlock.MemoryLockManager("peers")
    theirs = prefect_manager("prefect.locking.memory", "MemoryLockManager")
    pname = "prefect MemoryLockManager"
    n = 200_000
    rows: list[Row] = []
    step("memory uncontended")
    # In alternation, as the other media (Prefect's calls are as cheap as ours here).
    sync = {"floor": bench_memory.bare_lock, "ours": bench_memory.uncontended(ours, None)}
    async_ = {"floor": bench_memory.bare_async_lock, "ours": bench_memory.uncontended_async(ours, None)}
    if theirs is not None:
        sync["prefect"] = bench_memory.uncontended(theirs, None)
        async_["prefect"] = bench_memory.uncontended_async(theirs, None)
    best, abest = per_op_interleaved(sync, n, rounds=5), per_op_interleaved(async_, n // 4, rounds=5)
    floor, t, afloor, at = best["floor"], best["ours"], abest["floor"], abest["ours"]
    rows.append(Row("memory: sync acquire+release", "s", t, floor, "threading.Lock", floor, "threading.Lock",
                    "n/a: the floor itself"))
    rows.append(Row("memory: async acquire+release", "s", at, afloor, "asyncio.Lock", afloor, "asyncio.Lock",
                    "n/a: the floor itself"))
    if theirs is not None:
        p, ap = best["prefect"], abest["prefect"]
        rows.append(Row("memory: sync acquire+release", "s", t, floor, "threading.Lock", p, pname, "best correct",
                        t <= p))
        rows.append(Row("memory: async acquire+release", "s", at, afloor, "asyncio.Lock", ap, pname, "best correct",
                        at <= ap))

    step("memory hand-off")
    lock = threading.Lock()
    bare = bench_memory.handoff_threads(lock.acquire, lock.release, lambda: True)

    def queued() -> bool:
        info = ours.inspect("h")
        return info is not None and bool(info.waiters)

    mine = bench_memory.handoff_threads(lambda: ours.acquire_lock("h", f"x{threading.get_ident()}"),
                                        lambda: ours.release_lock("h", f"x{threading.get_ident()}"), queued)
    pref = None
    if theirs is not None:
        pref = bench_memory.handoff_threads(lambda: theirs.acquire_lock("h", f"x{threading.get_ident()}"),
                                            lambda: theirs.release_lock("h", f"x{threading.get_ident()}"),
                                            lambda: True)
    amine, abare = bench_memory.handoff_tasks(ours), bench_memory.handoff_tasks(None)
    for q in (50, 99):
        rows.append(Row(f"memory: hand-off thread->thread p{q}", "s", pct(mine, q), pct(bare, q), "threading.Lock",
                        pct(bare, q), "threading.Lock", "n/a: the floor itself"))
        if pref is not None:
            rows.append(Row(f"memory: hand-off thread->thread p{q}", "s", pct(mine, q), pct(bare, q),
                            "threading.Lock", pct(pref, q), pname, "best correct", pct(mine, q) <= pct(pref, q)))
        rows.append(Row(f"memory: hand-off task->task p{q}", "s", pct(amine, q), pct(abare, q), "asyncio.Lock",
                        pct(abare, q), "asyncio.Lock", "n/a: the floor itself"))

    step("memory contention")
    bare_tp, *_ = threads_contention(lambda _n: lock.acquire(), lambda _n: lock.release())
    our_tp, our_overlaps, our_timeouts, our_errors = threads_contention(
        lambda name: ours.acquire_lock("c", name, acquire_timeout=TIMEOUT), lambda name: ours.release_lock("c", name))
    name = f"memory: {THREADS} threads on one key"
    note = f"overlaps: txlock {our_overlaps} (timeouts {our_timeouts}, exceptions {our_errors})"
    rows.append(Row(name, "ops/s", our_tp, bare_tp, "threading.Lock (unfair)", bare_tp, "threading.Lock",
                    "n/a: the floor itself", note=note, lower_is_better=False))
    if theirs is not None:
        p_tp, p_overlaps, p_timeouts, p_errors = threads_contention(
            lambda n: theirs.acquire_lock("c", n, acquire_timeout=TIMEOUT), lambda n: theirs.release_lock("c", n))
        broken = p_overlaps > 0
        label = pname + (f" [BROKE EXCLUSION: {p_overlaps} overlaps, not ranked]" if broken else "")
        rows.append(Row(name, "ops/s", our_tp, bare_tp, "threading.Lock (unfair)", None if broken else p_tp, label,
                        "best correct, 0 overlaps", our_overlaps == 0 and (broken or our_tp >= p_tp),
                        note=f"{note}; Prefect {p_overlaps} (timeouts {p_timeouts}, exceptions {p_errors})",
                        lower_is_better=False))
    return rows


@contextlib.contextmanager
def peer_header() -> Iterator[None]:
    """Print what ``report`` prints with the Prefect columns named for the peers."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield
    print(out.getvalue().replace(*PEER_COLUMNS, 1), end="")


def main() -> None:
    rows: list[Row] = []
    for medium in (memory_rows, file_rows, redis_rows, postgres_rows):
        rows.extend(medium())
    missing = [p.label for p in FILE_PEERS + REDIS_PEERS + POSTGRES_PEERS if not p.available()]
    notes = (
        "Each row sets one peer beside txlock (its async API beside async peers) and the medium's floor, all "
        "measured in this run; *met* says txlock's figure is the better one. Hand-off: the waiter is blocked "
        f"(or, for a peer that polls, between two polls: the holder waits {POLL_SETTLE * 1e3:.0f} ms) when the "
        "holder releases; the time runs from just before the release to the waiter's return. Contention: "
        f"{THREADS} threads in memory, {PROCESSES} spawned processes elsewhere; every critical section creates "
        "and removes an O_EXCL marker file (an overlap is a create that finds it). Peers use their defaults "
        "(redis-py and prefect-redis poll every 0.1 s, pottery up to 0.2 s, portalocker 0.25 s, filelock 0.05 s)."
    )
    if missing:
        notes += f" Not installed, so not measured: {', '.join(missing)}."
    with peer_header():
        report("peers", "Peers: the libraries a user would pick instead", rows, notes=notes)


if __name__ == "__main__":
    main()
