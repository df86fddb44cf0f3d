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

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import redis
from redis.lock import Lock

import txlock
from _common import Op, contend, entered, handoff, manager_ops, prefect_manager, prefect_per_op, scratch
from _harness import Row, floor_and_ours, pct, per_op, report, step, timed_keys
from _sizes import CONTENTION_SECONDS, HANDOFFS, MANY_KEYS, PREFECT_HANDOFFS

SERVER = os.environ.get("TXLOCK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Spawned children re-import this module: they inherit the run id through the environment.
RUN = os.environ.setdefault("TXLOCK_BENCH_RUN", uuid.uuid4().hex[:8])
PREFIX = f"txlock-bench:{RUN}:"
PROCESSES = 8
HELD_KEYS = MANY_KEYS


def url() -> str:
    return f"{SERVER}{'&' if '?' in SERVER else '?'}prefix={PREFIX}"


def raw() -> redis.Redis:
    return redis.Redis.from_url(SERVER)


def prefect_redis() -> Any:
    """prefect-redis's RedisLockManager on the same server, or None when not installed."""
    return prefect_manager("prefect_redis.locking", "RedisLockManager", connection_url=SERVER)


def peer(measured: object) -> str:
    """The Prefect column's label: prefect-redis's manager, or why there is no number."""
    return "prefect-redis RedisLockManager" if measured is not None else "prefect-redis not installed"


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
    t_floor, t_ours = floor_and_ours(floor, m, "u", n)
    t_rlock = per_op(redis_lock, n, repeat=3)
    t_prefect = prefect_per_op(prefect_redis(), f"bench{RUN}:prefect-u", 1000)
    m.close()
    r.close()
    return Row(
        "uncontended acquire+release", "s", t_ours, t_floor, "SET NX PX + DEL (2 round trips)",
        t_prefect, peer(t_prefect), note=f"redis-py Lock {t_rlock * 1e6:.0f} us", extra={"redis_py_lock": t_rlock},
    ).within(1.25)


# ---------------------------------------------------------------------- hand-off


def handoff_ops(kind: str, target: str, role: str) -> tuple[Op, Op, Op]:
    """What each side of a hand-off does (see ``_common.handoff``); the floor's parent
    ``LPUSH``es what the child's ``BLPOP`` waits for."""
    if kind == "txlock":
        m = txlock.from_url(target)

        def queued() -> None:
            while True:
                info = m.inspect("handoff")
                if info is not None and info.waiters:
                    return

        return (*manager_ops(m, "handoff", role), queued)
    if kind == "prefect":

        def polling() -> None:
            time.sleep(0.15)  # it polls every 100 ms: let it start polling

        return (*manager_ops(prefect_redis(), f"bench{RUN}:prefect-handoff", role), polling)
    r = redis.Redis.from_url(target)
    signal = f"bench{RUN}:signal"
    if role == "child":
        return (lambda: r.blpop([signal], 0)), (lambda: None), (lambda: None)

    def blocked() -> None:
        while int(r.info("clients")["blocked_clients"]) < 1:
            pass

    return (lambda: None), (lambda: r.lpush(signal, b"go")), blocked


def handoff_samples(kind: str, rounds: int) -> list[float]:
    return handoff(handoff_ops, kind, url() if kind == "txlock" else SERVER, rounds)


def handoff_row() -> Row:
    floor = handoff_samples("floor", HANDOFFS)
    ours = handoff_samples("txlock", HANDOFFS)
    theirs = handoff_samples("prefect", PREFECT_HANDOFFS) if prefect_redis() is not None else None
    p50, floor50 = pct(ours, 50), pct(floor, 50)
    return Row(
        "cross-process hand-off p50", "s", p50, floor50, "LPUSH -> BLPOP between processes",
        pct(theirs, 50) if theirs else None, peer(theirs), note=f"p99 {pct(ours, 99) * 1e3:.2f} ms",
        extra={"p99": pct(ours, 99), "floor_p99": pct(floor, 99)},
    ).within(2)


# ---------------------------------------------------------------------- contention


def _contender(kind: str, target: str, marker: str, seconds: float, start: Any, out: Any) -> None:
    pid = os.getpid()
    holder = f"c{pid}"
    if kind == "txlock":
        acquire, release = manager_ops(txlock.from_url(target), "hot", holder)
    elif kind == "prefect":
        acquire, release = manager_ops(prefect_redis(), f"bench{RUN}:prefect-hot", holder)
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
        if not entered(marker):
            overlaps += 1
        release()
        count += 1
    out.put((count, overlaps))


def contention(kind: str) -> tuple[Any, ...]:
    """(operations per second, overlaps) of PROCESSES processes."""
    target = url() if kind == "txlock" else SERVER
    with scratch("redis") as tmp:
        args = (kind, target, str(tmp / "inside"), CONTENTION_SECONDS)
        # The start is given 1.5 s after the spawn: let every process import and connect.
        return contend(_contender, args, PROCESSES, CONTENTION_SECONDS, settle=1.5)


def contention_row() -> Row:
    floor, _ = contention("floor")
    ours, overlaps = contention("txlock")
    theirs = contention("prefect")[0] if prefect_redis() is not None else None
    return Row(
        f"{PROCESSES}-process contention on one key", "ops/s", ours, floor, "SET NX PX + DEL spin",
        theirs, peer(theirs),
        target="0 overlaps", met=overlaps == 0, lower_is_better=False, note=f"{overlaps} overlaps",
    )


# ---------------------------------------------------------------------- many held keys


def held_keys_rows() -> list[Row]:
    r = raw()

    def used_mib() -> float:
        return int(r.info("memory")["used_memory"]) / 2**20

    m = txlock.from_url(url())
    t_ours, mem_ours = timed_keys(lambda i: m.acquire_lock(f"held:{i}", "me"), HELD_KEYS, used_mib)
    for i in range(HELD_KEYS):
        m.release_lock(f"held:{i}", "me")
    m.close()

    t_floor, mem_floor = timed_keys(lambda i: r.set(f"bench{RUN}:held:{i}", b"me", nx=True, px=600_000), HELD_KEYS,
                                    used_mib)
    p = prefect_redis()
    t_prefect = mem_prefect = None
    if p is not None:
        t_prefect, mem_prefect = timed_keys(lambda i: p.acquire_lock(f"bench{RUN}:pheld:{i}", "me"), HELD_KEYS,
                                            used_mib)
        for i in range(HELD_KEYS):
            p.release_lock(f"bench{RUN}:pheld:{i}", "me")
    r.close()
    name = peer(p)
    return [
        Row(f"acquire {HELD_KEYS:,} keys (per key)", "s", t_ours, t_floor, "SET NX PX", t_prefect, name),
        Row(f"server memory for {HELD_KEYS:,} held keys", "MiB", mem_ours, mem_floor, "SET NX PX keys",
            mem_prefect, name, note="INFO memory used_memory delta"),
    ]


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
