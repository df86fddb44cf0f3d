"""Benchmarks of the Redis backend, beside the floors of the medium and the Redis peers.

Rows (all against the same server, in the same run):

* uncontended acquire+release (sync), beside redis-py ``SET NX PX`` + ``DEL`` (two round
  trips, the floor), redis-py's own ``redis.lock.Lock`` and prefect-redis's
  ``RedisLockManager``;
* cross-process hand-off p50 (release in this process -> the waiting acquire returns in
  another), beside an ``LPUSH`` -> ``BLPOP`` hand-off between two processes (the floor) and
  prefect-redis;
* 8-process contention throughput on one key with an exclusion check (an ``O_EXCL`` marker
  file created inside the critical section), beside 8 processes spinning on
  ``SET NX PX`` + ``DEL`` and prefect-redis;
* 10,000 held keys: time per acquire and the server's memory growth (``INFO memory``),
  beside 10,000 ``SET NX PX`` keys and prefect-redis.

Server: ``$TXLOCK_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); every key lives
under a fresh prefix and is deleted afterwards (no ``FLUSHALL``).
Run with the benchmark environment (Prefect installed): ``python benchmarks/bench_redis.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import redis
from redis.lock import Lock

import txlock
from _harness import Row, pct, per_op, report

SERVER = os.environ.get("TXLOCK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Spawned children re-import this module: they inherit the run id through the environment.
RUN = os.environ.setdefault("TXLOCK_BENCH_RUN", uuid.uuid4().hex[:8])
PREFIX = f"txlock-bench:{RUN}:"
CTX = mp.get_context("spawn")
HANDOFFS = 300
PREFECT_HANDOFFS = 20
CONTENTION_SECONDS = 3.0
PROCESSES = 8
HELD_KEYS = 10_000


def url() -> str:
    return f"{SERVER}{'&' if '?' in SERVER else '?'}prefix={PREFIX}"


def raw() -> redis.Redis:
    return redis.Redis.from_url(SERVER)


def prefect_redis() -> Any:
    """prefect-redis's RedisLockManager on the same server, or None when not installed."""
    try:
        from prefect_redis.locking import RedisLockManager
    except ImportError:
        return None
    return RedisLockManager(connection_url=SERVER)


def cleanup() -> None:
    r = raw()
    for pattern in (f"{PREFIX}*", f"*bench{RUN}*"):
        names = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(names), 1000):
            r.delete(*names[i : i + 1000])
    r.close()


# ---------------------------------------------------------------------- uncontended


def uncontended() -> Row:
    m = txlock.from_url(url())
    r = raw()

    def ours(n: int) -> None:
        acquire, release = m.acquire_lock, m.release_lock
        for _ in range(n):
            acquire("u", "me")
            release("u", "me")

    def floor(n: int) -> None:
        set_, delete = r.set, r.delete
        for _ in range(n):
            set_(f"bench{RUN}:floor", b"me", nx=True, px=30000)
            delete(f"bench{RUN}:floor")

    def redis_lock(n: int) -> None:
        for _ in range(n):
            lock = Lock(r, f"bench{RUN}:rlock", timeout=30)
            lock.acquire()
            lock.release()

    n = 3000
    t_floor = min(per_op(floor, n, repeat=3) for _ in range(2))
    t_ours = min(per_op(ours, n, repeat=3) for _ in range(2))
    t_floor = min(t_floor, per_op(floor, n, repeat=3))
    t_rlock = per_op(redis_lock, n, repeat=3)
    p = prefect_redis()
    t_prefect = None
    if p is not None:
        key = f"bench{RUN}:prefect-u"

        def theirs(n: int) -> None:
            for _ in range(n):
                p.acquire_lock(key, "me")
                p.release_lock(key, "me")

        t_prefect = per_op(theirs, 1000, repeat=3)
    m.close()
    r.close()
    return Row(
        "uncontended acquire+release", "s", t_ours, t_floor, "SET NX PX + DEL (2 round trips)",
        t_prefect, "prefect-redis RedisLockManager" if p is not None else "prefect-redis not installed",
        target="<= 1.25x floor", met=t_ours <= 1.25 * t_floor,
        note=f"redis-py Lock {t_rlock * 1e6:.0f} us",
        extra={"redis_py_lock": t_rlock},
    )


# ---------------------------------------------------------------------- hand-off


def _handoff_child(kind: str, target: str, conn: Any, rounds: int) -> None:
    if kind == "txlock":
        m = txlock.from_url(target)
        acquire = lambda: m.acquire_lock("handoff", "child")  # noqa: E731
        release = lambda: m.release_lock("handoff", "child")  # noqa: E731
    elif kind == "prefect":
        p = prefect_redis()
        key = f"bench{RUN}:prefect-handoff"
        acquire = lambda: p.acquire_lock(key, "child")  # noqa: E731
        release = lambda: p.release_lock(key, "child")  # noqa: E731
    else:
        r = redis.Redis.from_url(target)
        acquire = lambda: r.blpop([f"bench{RUN}:signal"], 0)  # noqa: E731
        release = lambda: None  # noqa: E731
    for _ in range(rounds):
        conn.recv()
        conn.send("ready")
        acquire()
        t1 = time.monotonic()
        release()
        conn.send(t1)


def handoff(kind: str, rounds: int) -> list[float]:
    """Samples of release (here) -> acquire returns (in a spawned process)."""
    r = raw()
    target = url() if kind == "txlock" else SERVER
    if kind == "txlock":
        m = txlock.from_url(target)
        acquire = lambda: m.acquire_lock("handoff", "parent")  # noqa: E731
        release = lambda: m.release_lock("handoff", "parent")  # noqa: E731

        def queued() -> None:
            while True:
                info = m.inspect("handoff")
                if info is not None and info.waiters:
                    return

    elif kind == "prefect":
        p = prefect_redis()
        key = f"bench{RUN}:prefect-handoff"
        acquire = lambda: p.acquire_lock(key, "parent")  # noqa: E731
        release = lambda: p.release_lock(key, "parent")  # noqa: E731

        def queued() -> None:
            time.sleep(0.15)  # it polls every 100 ms: let it start polling

    else:
        acquire = lambda: None  # noqa: E731
        release = lambda: r.lpush(f"bench{RUN}:signal", b"go")  # noqa: E731

        def queued() -> None:
            while int(r.info("clients")["blocked_clients"]) < 1:
                pass

    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_handoff_child, args=(kind, target, child, rounds))
    proc.start()
    samples = []
    for _ in range(rounds):
        acquire()
        parent.send("go")
        parent.recv()
        queued()
        t0 = time.monotonic()
        release()
        samples.append(parent.recv() - t0)
    proc.join(60)
    r.close()
    return samples


def handoff_row() -> Row:
    floor = handoff("floor", HANDOFFS)
    ours = handoff("txlock", HANDOFFS)
    theirs = handoff("prefect", PREFECT_HANDOFFS) if prefect_redis() is not None else None
    p50, floor50 = pct(ours, 50), pct(floor, 50)
    return Row(
        "cross-process hand-off p50", "s", p50, floor50, "LPUSH -> BLPOP between processes",
        pct(theirs, 50) if theirs else None,
        "prefect-redis RedisLockManager" if theirs else "prefect-redis not installed",
        target="<= 2x floor", met=p50 <= 2 * floor50,
        note=f"p99 {pct(ours, 99) * 1e3:.2f} ms",
        extra={"p99": pct(ours, 99), "floor_p99": pct(floor, 99)},
    )


# ---------------------------------------------------------------------- contention


def _contender(kind: str, target: str, marker: str, seconds: float, start: Any, out: Any) -> None:
    pid = os.getpid()
    holder = f"c{pid}"
    if kind == "txlock":
        m = txlock.from_url(target)
        acquire = lambda: m.acquire_lock("hot", holder)  # noqa: E731
        release = lambda: m.release_lock("hot", holder)  # noqa: E731
    elif kind == "prefect":
        p = prefect_redis()
        key = f"bench{RUN}:prefect-hot"
        acquire = lambda: p.acquire_lock(key, holder)  # noqa: E731
        release = lambda: p.release_lock(key, holder)  # noqa: E731
    else:
        r = redis.Redis.from_url(target)
        name = f"bench{RUN}:floor-hot"

        def acquire() -> bool:
            while not r.set(name, holder, nx=True, px=30000):
                pass
            return True

        release = lambda: r.delete(name)  # noqa: E731
    count = overlaps = 0
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        acquire()
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            os.unlink(marker)
        except FileExistsError:
            overlaps += 1
        release()
        count += 1
    out.put((count, overlaps))


def contention(kind: str) -> tuple[float, int]:
    target = url() if kind == "txlock" else SERVER
    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "inside")
        start, out = CTX.Event(), CTX.Queue()
        procs = [CTX.Process(target=_contender, args=(kind, target, marker, CONTENTION_SECONDS, start, out))
                 for _ in range(PROCESSES)]
        for proc in procs:
            proc.start()
        time.sleep(1.5)  # let every process import and connect before the clock starts
        start.set()
        results = [out.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(60)
    return sum(c for c, _ in results) / CONTENTION_SECONDS, sum(o for _, o in results)


def contention_row() -> Row:
    floor, _ = contention("floor")
    ours, overlaps = contention("txlock")
    theirs = contention("prefect")[0] if prefect_redis() is not None else None
    return Row(
        f"{PROCESSES}-process contention on one key", "ops/s", ours, floor, "SET NX PX + DEL spin",
        theirs, "prefect-redis RedisLockManager" if theirs is not None else "prefect-redis not installed",
        target="0 overlaps", met=overlaps == 0, lower_is_better=False, note=f"{overlaps} overlaps",
    )


# ---------------------------------------------------------------------- many held keys


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def held_keys_rows() -> list[Row]:
    r = raw()
    m = txlock.from_url(url())
    before = used_memory(r)
    t0 = time.perf_counter()
    for i in range(HELD_KEYS):
        m.acquire_lock(f"held:{i}", "me")
    t_ours = (time.perf_counter() - t0) / HELD_KEYS
    mem_ours = (used_memory(r) - before) / 2**20
    for i in range(HELD_KEYS):
        m.release_lock(f"held:{i}", "me")
    m.close()

    before = used_memory(r)
    t0 = time.perf_counter()
    for i in range(HELD_KEYS):
        r.set(f"bench{RUN}:held:{i}", b"me", nx=True, px=600_000)
    t_floor = (time.perf_counter() - t0) / HELD_KEYS
    mem_floor = (used_memory(r) - before) / 2**20

    p = prefect_redis()
    t_prefect = mem_prefect = None
    if p is not None:
        before = used_memory(r)
        t0 = time.perf_counter()
        for i in range(HELD_KEYS):
            p.acquire_lock(f"bench{RUN}:pheld:{i}", "me")
        t_prefect = (time.perf_counter() - t0) / HELD_KEYS
        mem_prefect = (used_memory(r) - before) / 2**20
        for i in range(HELD_KEYS):
            p.release_lock(f"bench{RUN}:pheld:{i}", "me")
    r.close()
    name = "prefect-redis RedisLockManager" if p is not None else "prefect-redis not installed"
    return [
        Row(f"acquire {HELD_KEYS:,} keys (per key)", "s", t_ours, t_floor, "SET NX PX", t_prefect, name),
        Row(f"server memory for {HELD_KEYS:,} held keys", "MiB", mem_ours, mem_floor, "SET NX PX keys",
            mem_prefect, name, note="INFO memory used_memory delta"),
    ]


def step(name: str) -> None:
    print(f"[bench_redis] {time.strftime('%H:%M:%S')} {name}", file=sys.stderr, flush=True)


def main() -> None:
    rows: list[Row] = []
    try:
        for name, fn in (("uncontended", uncontended), ("hand-off", handoff_row), ("contention", contention_row)):
            step(name)
            rows.append(fn())  # type: ignore[operator]
        step("held keys")
        rows.extend(held_keys_rows())
    finally:
        cleanup()
    report("redis", "Redis backend", rows,
           notes=f"Server {redis.Redis.from_url(SERVER).info('server')['redis_version']} on loopback; "
                 "floors are bare redis-py calls on the same server in the same run.")


if __name__ == "__main__":
    main()
