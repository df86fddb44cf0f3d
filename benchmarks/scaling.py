"""How cost grows: the scaling curves of every backend, each beside the floor of its medium.

    python benchmarks/scaling.py [BACKEND...]     backends: memory file sqlite redis postgres
    TXLOCK_BENCH_QUICK=1 python benchmarks/scaling.py   (smoke run: tiny sizes, pictures in a temp dir)

Four curves per backend (issue 17, section 3), txlock and the floor on the same axes:

* **held keys**: acquire+release of one more key, and the size of the store, while
  10 / 1k / 100k / 1M keys are held (files and SQLite stop at 100k);
* **waiters**: hand-off latency (release -> the head waiter's acquire returns) and the load
  the waiting puts on the medium (server statements per second for Redis and PostgreSQL,
  this process's CPU for the local backends) as 1 / 10 / 100 / 1k / 10k async waiters
  queue on one key;
* **processes**: throughput on one key and on distinct keys as 1 / 2 / 4 / 8 / 16
  processes (threads for the memory backend) contend, each critical section checked for
  overlaps;
* **expiry and recovery**: the distribution of how late a waiter gets a lock after its
  ``hold_timeout`` ends, and of how long after the holder's SIGKILL it gets it.

Redis and PostgreSQL run on private servers started here (``scaling_servers``), never on the
shared ones. Results go to ``benchmarks/results/scaling.json``, pictures to ``docs/img/`` and
the markdown section to ``benchmarks/results/scaling.md`` (``scaling_plot``); a smoke run
writes its pictures and section to a temporary directory instead and prints where.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import txlock
from _common import CTX, contend, entered, scratch
from _harness import RESULTS, machine, pct, step
from _sizes import QUICK, sized

BACKENDS = ["memory", "file", "sqlite", "redis", "postgres"]
HELD = {
    "memory": sized([10, 1_000, 100_000, 1_000_000], [10, 100, 1_000]),
    "file": sized([10, 1_000, 100_000], [10, 100, 1_000]),
    "sqlite": sized([10, 1_000, 100_000], [10, 100, 1_000]),
    "redis": sized([10, 1_000, 100_000, 1_000_000], [10, 100, 1_000]),
    "postgres": sized([10, 1_000, 100_000, 1_000_000], [10, 100, 1_000]),
}
PROBES = sized(2_000, 30)  # acquire+release pairs timed at each size (best of 3 passes)
WAITERS = sized([1, 10, 100, 1_000, 10_000], [1, 10, 100])
HANDOFF_ROUNDS = sized(200, 10)
LOAD_SECONDS = sized(3.0, 0.5)  # the window in which the waiting is measured
FLOOR_CONNECTIONS = 1_000  # the BLPOP floor opens at most this many connections
PROCESSES = sized([1, 2, 4, 8, 16], [1, 2, 4])
CONTEND_SECONDS = sized(2.0, 0.3)
EXPIRY_TTL = sized(0.25, 0.1)
EXPIRY_SAMPLES = sized(100, 5)
RECOVERY_SAMPLES = sized(20, 2)
#: Liveness window of process-bound holds on Redis / PostgreSQL: the default (5 s / 10 s) in
#: a full run; 1 s in a smoke run so it stays short.
LIVENESS = sized({"redis": 5.0, "postgres": 10.0}, {"redis": 1.0, "postgres": 1.0})


# ---------------------------------------------------------------------- backends


class Backend:
    """One backend of one run: how to reach it (a URL children can open) and its floors."""

    def __init__(self, name: str, tmp: Path, server_url: str = "", statements: bool = False) -> None:
        self.name = name
        self.tmp = tmp
        self.server = server_url
        self.statements = statements  # pg_stat_statements is loaded (exact statement counts)
        self.run = uuid.uuid4().hex[:6]

    def url(self, tag: str) -> str:
        """A txlock URL for a fresh, empty store named ``tag``."""
        if self.name == "memory":
            return "memory://"
        if self.name == "file":
            return f"file://{self.tmp / f'file-{tag}'}"
        if self.name == "sqlite":
            return f"sqlite://{self.tmp / f'sqlite-{tag}.db'}"
        sep = "&" if "?" in self.server else "?"
        return f"{self.server}{sep}prefix=s{self.run}{tag}:&liveness={LIVENESS[self.name]:g}"

    def manager(self, tag: str) -> Any:
        if self.name == "file":
            (self.tmp / f"file-{tag}").mkdir(exist_ok=True)
        return txlock.from_url(self.url(tag))


def rss_mib() -> float:
    """Resident memory of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_mib(path: Path) -> float:
    """Disk space used by the files under ``path`` (allocated blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


def best_per_op(fn: Callable[[int], None], n: int) -> float:
    """Best of 3 passes of ``fn(n)``, seconds per operation (after a short warm-up)."""
    fn(max(1, n // 10))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


# ---------------------------------------------------------------------- held keys


class HeldFloor:
    """The floor of "hold N keys, then take one more": the cheapest store of the medium."""

    def __init__(self, b: Backend) -> None:
        self.b = b
        self.count = 0
        name = b.name
        if name == "memory":
            self.lock = threading.Lock()
            self.table: dict[str, str] = {}
        elif name == "file":
            self.dir = b.tmp / "floor-held"
            self.dir.mkdir()
            self.dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        elif name == "sqlite":
            self.path = b.tmp / "floor-held.db"
            self.cx = sqlite3.connect(self.path, isolation_level=None)
            self.cx.execute("PRAGMA journal_mode = WAL")
            self.cx.execute("PRAGMA synchronous = NORMAL")
            self.cx.execute("CREATE TABLE f (k BLOB PRIMARY KEY, h BLOB) WITHOUT ROWID")
        elif name == "redis":
            import redis

            self.r = redis.Redis.from_url(b.server)
        else:
            import psycopg

            self.pg = psycopg.connect(b.server, autocommit=True)
            self.table_name = f"floor_held_{b.run}"
            self.pg.execute(f"CREATE UNLOGGED TABLE {self.table_name} (k bytea PRIMARY KEY, h bytea, t bigint)")

    def fill(self, upto: int) -> None:
        """Hold keys ``count .. upto-1`` (bulk where the medium allows: the fill is not timed)."""
        lo, hi = self.count, upto
        name = self.b.name
        if name == "memory":
            for i in range(lo, hi):
                self.table[f"h:{i}"] = "me"
        elif name == "file":
            for i in range(lo, hi):
                fd = os.open(f"h{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=self.dfd)
                os.write(fd, b"x" * 64)
                os.close(fd)
        elif name == "sqlite":
            self.cx.execute("BEGIN")
            self.cx.executemany("INSERT INTO f VALUES (?, ?)", ((b"h:%d" % i, b"me") for i in range(lo, hi)))
            self.cx.execute("COMMIT")
        elif name == "redis":
            for start in range(lo, hi, 10_000):
                pipe = self.r.pipeline(transaction=False)
                for i in range(start, min(hi, start + 10_000)):
                    pipe.set(f"floor:h:{i}", b"me", nx=True, px=3_600_000)
                pipe.execute()
        else:
            self.pg.execute(f"INSERT INTO {self.table_name} SELECT convert_to('h:' || i, 'UTF8'), 'me', 1 "
                            "FROM generate_series(%s::bigint, %s::bigint) AS i", (lo, hi - 1))
        self.count = upto

    def op(self) -> Callable[[int], None]:
        """``fn(n)``: n acquire+release pairs of one more key, the floor's way."""
        name = self.b.name
        if name == "memory":
            lock, table = self.lock, self.table

            def run(n: int) -> None:
                for _ in range(n):
                    with lock:
                        table["probe"] = "me"
                    with lock:
                        del table["probe"]
        elif name == "file":
            dfd = self.dfd

            def run(n: int) -> None:
                for _ in range(n):
                    fd = os.open("probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=dfd)
                    os.write(fd, b"x" * 64)
                    os.close(fd)
                    os.unlink("probe", dir_fd=dfd)
        elif name == "sqlite":
            ex = self.cx.execute

            def run(n: int) -> None:
                for _ in range(n):
                    ex("INSERT INTO f VALUES (?, ?)", (b"probe", b"me"))
                    ex("DELETE FROM f WHERE k = ?", (b"probe",))
        elif name == "redis":
            r = self.r

            def run(n: int) -> None:
                for _ in range(n):
                    r.set("floor:probe", b"me", nx=True, px=30_000)
                    r.delete("floor:probe")
        else:
            ins = f"INSERT INTO {self.table_name} VALUES (%s, %s, 1) ON CONFLICT DO NOTHING"
            dele = f"DELETE FROM {self.table_name} WHERE k = %s AND h = %s"
            pg = self.pg

            def run(n: int) -> None:
                for _ in range(n):
                    pg.execute(ins, (b"probe", b"me"), prepare=True)
                    pg.execute(dele, (b"probe", b"me"), prepare=True)
        return run

    def close(self) -> None:
        name = self.b.name
        if name == "file":
            os.close(self.dfd)
        elif name == "sqlite":
            self.cx.close()
        elif name == "redis":
            self.r.close()
        elif name == "postgres":
            self.pg.execute(f"DROP TABLE {self.table_name}")
            self.pg.close()


def store_mib(b: Backend, what: str) -> float:
    """The size of the store ``what`` ("ours" or "floor"): process memory, files, database
    files, Redis ``used_memory``, or PostgreSQL relation sizes."""
    if b.name == "memory":
        return rss_mib()
    if b.name == "file":
        return tree_mib(b.tmp / ("file-held" if what == "ours" else "floor-held"))
    if b.name == "sqlite":
        stem = "sqlite-held.db" if what == "ours" else "floor-held.db"
        return sum(p.stat().st_size for p in b.tmp.glob(stem + "*")) / 2**20
    if b.name == "redis":
        import redis

        with redis.Redis.from_url(b.server) as r:
            return int(r.info("memory")["used_memory"]) / 2**20
    import psycopg

    with psycopg.connect(b.server, autocommit=True) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(size[0]) / 2**20 if size else float("nan")


def held_keys_curve(b: Backend) -> dict[str, Any]:
    """Latency of one more acquire+release, and store size, as held keys grow."""
    m = b.manager("held")
    floor = HeldFloor(b)
    out: dict[str, Any] = {"x": [], "txlock_latency": [], "floor_latency": [], "txlock_mib": [], "floor_mib": []}
    # Each side's size is the sum of the growth measured around its own fills (the two
    # stores can share a gauge: this process's memory, the Redis server's used_memory).
    held, ours_mib, floor_mib = 0, 0.0, 0.0
    for n in HELD[b.name]:
        step(f"{b.name}: {n:,} held keys")
        before = store_mib(b, "ours")
        for i in range(held, n):
            m.acquire_lock(f"h:{i}", "me")
        held = n
        ours_mib += store_mib(b, "ours") - before
        before = store_mib(b, "floor")
        floor.fill(n)
        floor_mib += store_mib(b, "floor") - before
        out["txlock_mib"].append(ours_mib)
        out["floor_mib"].append(floor_mib)

        def ours(k: int) -> None:
            acquire, release = m.acquire_lock, m.release_lock
            for _ in range(k):
                acquire("probe", "me")
                release("probe", "me")

        run_floor = floor.op()
        t_ours = min(best_per_op(ours, PROBES) for _ in range(2))
        t_floor = min(best_per_op(run_floor, PROBES) for _ in range(2))
        out["x"].append(n)
        out["txlock_latency"].append(t_ours)
        out["floor_latency"].append(t_floor)
    floor.close()
    m.close()
    out["floor_name"] = FLOOR_NAMES["held"][b.name]
    return out


FLOOR_NAMES = {
    "held": {
        "memory": "dict under threading.Lock",
        "file": "O_EXCL create+write+close+unlink, N files in the directory",
        "sqlite": "INSERT+DELETE, N rows (WAL)",
        "redis": "SET NX PX + DEL, N keys",
        "postgres": "INSERT ON CONFLICT + DELETE, N rows (unlogged)",
    },
    "waiters": {
        "memory": "asyncio.Lock",
        "file": "asyncio.Lock (in-process waiters)",
        "sqlite": "asyncio.Lock (in-process waiters)",
        "redis": f"LPUSH -> BLPOP, min(W, {FLOOR_CONNECTIONS:,}) blocked connections",
        "postgres": "NOTIFY -> LISTEN (one listener)",
    },
    "processes": {
        "memory": "threading.Lock (threads)",
        "file": "bare flock",
        "sqlite": "INSERT (retry while taken) + DELETE",
        "redis": "SET NX PX spin + DEL",
        "postgres": "INSERT ON CONFLICT spin + DELETE",
    },
    "expiry": "OS timer overshoot (Event.wait(ttl))",
    "recovery": {
        "file": "flock released by the kernel at death",
        "sqlite": "flock released by the kernel at death",
        "redis": "a SET PX lease of the liveness window (no lock dies with a Redis connection)",
        "postgres": "session advisory lock (released when the server sees the connection close)",
    },
}


# ---------------------------------------------------------------------- waiters


class LoadGauge:
    """The load waiting puts on the medium over a window: server statements (Redis
    ``total_commands_processed``; PostgreSQL ``pg_stat_statements`` calls, else committed
    transactions) and this process's CPU time."""

    def __init__(self, b: Backend) -> None:
        self.b = b

    def _server(self) -> float:
        if self.b.name == "redis":
            import redis

            with redis.Redis.from_url(self.b.server) as r:
                return float(r.info("stats")["total_commands_processed"]) - 1  # minus this INFO
        if self.b.name == "postgres":
            import psycopg

            with psycopg.connect(self.b.server, autocommit=True) as conn:
                if self.b.statements:
                    q = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                         "WHERE query NOT LIKE '%pg_stat%'")
                else:
                    conn.execute("SELECT pg_stat_clear_snapshot()")
                    q = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                row = conn.execute(q).fetchone()
            return float(row[0]) if row else float("nan")
        return 0.0

    def begin(self) -> None:
        self.t0, self.cpu0, self.server0 = time.perf_counter(), time.process_time(), self._server()

    def end(self) -> tuple[float, float]:
        """(server statements per second, process CPU share) since :meth:`begin`."""
        server = self._server()
        elapsed = time.perf_counter() - self.t0
        if self.b.name == "redis":
            server -= 1  # the INFO of begin() itself
        return (server - self.server0) / elapsed, (time.process_time() - self.cpu0) / elapsed


async def _queued(count: Callable[[], Any], want: int, seconds: float = 300) -> bool:
    """Wait (bounded) until ``await count()`` reports ``want`` waiters."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = await count()
        if got is None:  # the backend cannot count: give the tasks time to park
            await asyncio.sleep(0.2 + want / 5_000)
            return True
        if got >= want:
            return True
        await asyncio.sleep(0.01)
    return False


async def _ours_waiters(b: Backend, m: Any, w: int, gauge: LoadGauge) -> tuple[float, float, float, float]:
    """(hand-off p50, p99, server statements/s, CPU share) with ``w`` waiting tasks."""
    key = "hot"
    assert await m.aacquire_lock(key, "h0")
    got: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    go = {f"w{i}": asyncio.Event() for i in range(w)}

    async def waiter(name: str) -> None:
        while True:
            await m.aacquire_lock(key, name)
            got.put_nowait((name, time.perf_counter()))
            await go[name].wait()
            go[name].clear()

    tasks = [asyncio.create_task(waiter(name)) for name in go]

    async def count() -> int | None:
        info = await asyncio.to_thread(m.inspect, key)
        return None if info is None or info.waiters is None else info.waiters

    await _queued(count, w)
    gauge.begin()
    await asyncio.sleep(LOAD_SECONDS)  # the window: everyone waits, the holder holds
    load, cpu = gauge.end()
    samples = []
    holder = "h0"
    for _ in range(HANDOFF_ROUNDS):
        t_rel = time.perf_counter()
        await m.arelease_lock(key, holder)
        if holder != "h0":
            go[holder].set()  # back to the tail of the queue
        holder, t_acq = await got.get()
        samples.append(t_acq - t_rel)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await m.arelease_lock(key, holder)
    return pct(samples, 50), pct(samples, 99), load, cpu


async def _floor_waiters(b: Backend, w: int, gauge: LoadGauge) -> tuple[float, float, float, float]:
    """The floor of :func:`_ours_waiters` (see ``FLOOR_NAMES["waiters"]``)."""
    samples: list[float] = []
    if b.name in ("memory", "file", "sqlite"):
        lock = asyncio.Lock()
        got: asyncio.Queue[float] = asyncio.Queue()
        await lock.acquire()

        async def waiter() -> None:
            while True:
                await lock.acquire()
                got.put_nowait(time.perf_counter())
                await got.join()

        tasks = [asyncio.create_task(waiter()) for _ in range(w)]
        await asyncio.sleep(0)
        gauge.begin()
        await asyncio.sleep(LOAD_SECONDS)
        load, cpu = gauge.end()
        for _ in range(HANDOFF_ROUNDS):
            t_rel = time.perf_counter()
            lock.release()
            samples.append(await got.get() - t_rel)
            got.task_done()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elif b.name == "redis":
        import redis.asyncio as aredis

        name = f"floor:signal:{uuid.uuid4().hex[:6]}"
        pool = aredis.ConnectionPool.from_url(b.server, max_connections=FLOOR_CONNECTIONS + 10)
        client = aredis.Redis(connection_pool=pool)
        stamps: asyncio.Queue[float] = asyncio.Queue()

        async def blocked() -> None:
            while True:
                await client.blpop([name], 0)
                stamps.put_nowait(time.perf_counter())

        n = min(w, FLOOR_CONNECTIONS)
        tasks = [asyncio.create_task(blocked()) for _ in range(n)]

        async def count() -> int:
            return int((await client.info("clients"))["blocked_clients"])

        await _queued(count, n)
        gauge.begin()
        await asyncio.sleep(LOAD_SECONDS)
        load, cpu = gauge.end()
        for _ in range(HANDOFF_ROUNDS):
            t_rel = time.perf_counter()
            await client.lpush(name, b"go")
            samples.append(await stamps.get() - t_rel)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.disconnect()
    else:
        import psycopg

        channel = f"floor_{uuid.uuid4().hex[:6]}"
        async with await psycopg.AsyncConnection.connect(b.server, autocommit=True) as listen, \
                await psycopg.AsyncConnection.connect(b.server, autocommit=True) as talk:
            await listen.execute(f"LISTEN {channel}")
            gauge.begin()
            await asyncio.sleep(LOAD_SECONDS)
            load, cpu = gauge.end()
            notes = listen.notifies()
            for _ in range(HANDOFF_ROUNDS):
                t_rel = time.perf_counter()
                await talk.execute(f"NOTIFY {channel}")
                await anext(notes)
                samples.append(time.perf_counter() - t_rel)
            await notes.aclose()
    return pct(samples, 50), pct(samples, 99), load, cpu


def waiters_curve(b: Backend) -> dict[str, Any]:
    """Hand-off latency and waiting load as async waiters on one key grow."""
    out: dict[str, Any] = {k: [] for k in ("x", "txlock_p50", "txlock_p99", "txlock_load", "txlock_cpu",
                                           "floor_p50", "floor_p99", "floor_load", "floor_cpu")}
    gauge = LoadGauge(b)
    for w in WAITERS:
        step(f"{b.name}: {w:,} waiters")
        m = b.manager(f"wait{w}")

        async def both(m: Any = m, w: int = w) -> tuple[Any, Any]:
            ours = await _ours_waiters(b, m, w, gauge)
            floor = await _floor_waiters(b, w, gauge)
            return ours, floor

        ours, floor = asyncio.run(both())
        m.close()
        out["x"].append(w)
        for side, values in (("txlock", ours), ("floor", floor)):
            for field, value in zip(("p50", "p99", "load", "cpu"), values, strict=True):
                out[f"{side}_{field}"].append(value)
    out["floor_name"] = FLOOR_NAMES["waiters"][b.name]
    out["load_unit"] = "server statements/s" if b.name in ("redis", "postgres") else "process CPU share"
    return out


# ---------------------------------------------------------------------- processes


def _floor_ops(name: str, target: str, key: str, holder: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """(acquire, release) of the floor of the processes curve for ``key`` (a child's side)."""
    if name == "file":
        fd = os.open(os.path.join(target, f"floor-{key}"), os.O_RDWR | os.O_CREAT, 0o600)
        return (lambda: fcntl.flock(fd, fcntl.LOCK_EX)), (lambda: fcntl.flock(fd, fcntl.LOCK_UN))
    if name == "sqlite":
        cx = sqlite3.connect(target, isolation_level=None, timeout=30)
        cx.execute("PRAGMA journal_mode = WAL")
        cx.execute("PRAGMA synchronous = NORMAL")
        cx.execute("CREATE TABLE IF NOT EXISTS f (k BLOB PRIMARY KEY, h BLOB) WITHOUT ROWID")
        k = key.encode()

        def acquire() -> None:
            while True:
                try:
                    cx.execute("INSERT INTO f VALUES (?, ?)", (k, holder.encode()))
                    return
                except sqlite3.IntegrityError:
                    pass

        return acquire, (lambda: cx.execute("DELETE FROM f WHERE k = ?", (k,)))
    if name == "redis":
        import redis

        r = redis.Redis.from_url(target)
        rk = f"floor:p:{key}"

        def racquire() -> None:
            while not r.set(rk, holder, nx=True, px=30_000):
                pass

        return racquire, (lambda: r.delete(rk))
    import psycopg

    conn = psycopg.connect(target, autocommit=True)
    conn.execute("CREATE UNLOGGED TABLE IF NOT EXISTS floor_p (k text PRIMARY KEY, h text)")
    ins = "INSERT INTO floor_p VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING k"

    def pacquire() -> None:
        while conn.execute(ins, (key, holder), prepare=True).fetchone() is None:
            pass

    return pacquire, (lambda: conn.execute("DELETE FROM floor_p WHERE k = %s", (key,), prepare=True))


def _proc_worker(name: str, kind: str, target: str, one_key: bool, marker: str, seconds: float,
                 start: Any, out: Any) -> None:
    """A contending process: acquire, check exclusion (one key), release, count."""
    holder = f"p{os.getpid()}"
    key = "hot" if one_key else holder
    if kind == "txlock":
        m = txlock.from_url(target)
        acquire: Callable[[], object] = lambda: m.acquire_lock(key, holder)  # noqa: E731
        release: Callable[[], object] = lambda: m.release_lock(key, holder)  # noqa: E731
    else:
        acquire, release = _floor_ops(name, target, key, holder)
    count = overlaps = 0
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        acquire()
        if one_key and not entered(marker):
            overlaps += 1
        release()
        count += 1
    out.put((count, overlaps))


def _threads(kind: str, one_key: bool, n: int, seconds: float) -> tuple[float, int]:
    """The memory backend's processes curve, with threads of this process."""
    m = txlock.MemoryLockManager()
    shared = threading.Lock()
    inside = [0]
    counts = [0] * n
    overlaps = [0]
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        holder, key = f"t{i}", "hot" if one_key else f"t{i}"
        own = threading.Lock()
        lock = shared if one_key else own
        barrier.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if kind == "txlock":
                m.acquire_lock(key, holder)
            else:
                lock.acquire()
            if one_key:
                inside[0] += 1
                if inside[0] != 1:
                    overlaps[0] += 1
                inside[0] -= 1
            if kind == "txlock":
                m.release_lock(key, holder)
            else:
                lock.release()
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.close()
    return sum(counts) / seconds, overlaps[0]


def processes_curve(b: Backend) -> dict[str, Any]:
    """Throughput on one key and on distinct keys as contending processes grow."""
    out: dict[str, Any] = {"x": list(PROCESSES), "overlaps": {}}
    for one_key, label in ((True, "one"), (False, "distinct")):
        for kind in ("txlock", "floor"):
            series = []
            total_overlaps = 0
            for n in PROCESSES:
                step(f"{b.name}: {n} {'threads' if b.name == 'memory' else 'processes'}, {label} key(s), {kind}")
                if b.name == "memory":
                    ops, overlaps = _threads(kind, one_key, n, CONTEND_SECONDS)
                else:
                    tag = f"p{label}{n}{kind}"
                    if kind == "txlock":
                        m = b.manager(tag)  # creates the directory or database once, outside the timing
                        m.close()
                        target = b.url(tag)
                    elif b.name == "file":
                        target = str(b.tmp / tag)
                        os.makedirs(target, exist_ok=True)
                    elif b.name == "sqlite":
                        target = str(b.tmp / f"{tag}.db")
                    else:
                        target = b.server
                    marker = str(b.tmp / f"inside-{tag}")
                    ops, overlaps = contend(_proc_worker, (b.name, kind, target, one_key, marker, CONTEND_SECONDS),
                                            n, CONTEND_SECONDS)
                series.append(ops)
                total_overlaps += overlaps
            out[f"{kind}_{label}"] = series
            out["overlaps"][f"{kind}_{label}"] = total_overlaps
    out["floor_name"] = FLOOR_NAMES["processes"][b.name]
    return out


# ---------------------------------------------------------------------- expiry and recovery


def _expiring_holder(url: str, rounds: int, ttl: float, conn: Any) -> None:
    """Child: take the key with ``hold_timeout=ttl`` each round and report when it ends."""
    m = txlock.from_url(url)
    for _ in range(rounds):
        lease = m.acquire_lease("exp", "child", None, ttl)
        assert lease is not None
        conn.send(lease.expires_at)
        conn.recv()
    m.close()


def expiry_samples(b: Backend) -> tuple[list[float], list[float]]:
    """(txlock, floor) samples of how late the waiter gets a lock whose hold timed out."""
    ours: list[float] = []
    if b.name == "memory":
        m = txlock.MemoryLockManager()
        for _ in range(EXPIRY_SAMPLES):
            lease = m.acquire_lease("exp", "holder", None, EXPIRY_TTL)
            assert lease is not None and lease.expires_at is not None
            m.acquire_lock("exp", "waiter")
            ours.append(time.time() - lease.expires_at)
            m.release_lock("exp", "waiter")
        m.close()
    else:
        m = b.manager("exp")
        here, there = CTX.Pipe()
        child = CTX.Process(target=_expiring_holder, args=(b.url("exp"), EXPIRY_SAMPLES, EXPIRY_TTL, there))
        child.start()
        for _ in range(EXPIRY_SAMPLES):
            expires_at = here.recv()
            m.acquire_lock("exp", "waiter")
            ours.append(time.time() - expires_at)
            m.release_lock("exp", "waiter")
            here.send("next")
        child.join(60)
        m.close()
    floor = []
    for _ in range(EXPIRY_SAMPLES):
        deadline = time.time() + EXPIRY_TTL
        threading.Event().wait(EXPIRY_TTL)
        floor.append(time.time() - deadline)
    return ours, floor


def _dying_holder(name: str, kind: str, target: str, conn: Any) -> None:
    """Child: hold the lock (bound to this process), say so, and wait to be killed."""
    if kind == "txlock":
        m = txlock.from_url(target)
        assert m.acquire_lock("rec", "child")
    elif name in ("file", "sqlite"):
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    elif name == "redis":
        import redis

        redis.Redis.from_url(target).set("floor:rec", b"child", px=int(LIVENESS["redis"] * 1000))
    else:
        import psycopg

        conn_pg = psycopg.connect(target, autocommit=True)
        conn_pg.execute("SELECT pg_advisory_lock(4242)")
    conn.send(os.getpid())
    conn.recv()  # never answered: the parent kills us


def recovery_samples(b: Backend) -> tuple[list[float], list[float]]:
    """(txlock, floor) samples of SIGKILL of the holder -> the waiter's acquire returns."""
    result: dict[str, list[float]] = {"txlock": [], "floor": []}
    for kind in ("txlock", "floor"):
        for i in range(RECOVERY_SAMPLES):
            tag = f"rec{i}"
            if kind == "txlock":
                m = b.manager(tag)
                target = b.url(tag)
            else:
                target = str(b.tmp / f"rec{i}.flock") if b.name in ("file", "sqlite") else b.server
            here, there = CTX.Pipe()
            child = CTX.Process(target=_dying_holder, args=(b.name, kind, target, there))
            child.start()
            pid = here.recv()
            assert pid == child.pid and child.is_alive()  # our own child, holding: kill it
            t_kill = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            if kind == "txlock":
                assert m.acquire_lock("rec", "waiter", acquire_timeout=120)
                result[kind].append(time.perf_counter() - t_kill)
                m.release_lock("rec", "waiter")
                m.close()
            else:
                result[kind].append(_floor_recover(b, target) - t_kill)
            child.join(30)
    return result["txlock"], result["floor"]


def _floor_recover(b: Backend, target: str) -> float:
    """Take the floor's lock after its holder died; the moment it is ours."""
    if b.name in ("file", "sqlite"):
        fd = os.open(target, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        t = time.perf_counter()
        os.close(fd)
        return t
    if b.name == "redis":
        import redis

        with redis.Redis.from_url(target) as r:
            while not r.set("floor:rec", b"waiter", nx=True, px=30_000):
                time.sleep(0.001)  # a benchmark may poll: this is the floor's own way
            t = time.perf_counter()
            r.delete("floor:rec")
        return t
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242)")
        t = time.perf_counter()
        conn.execute("SELECT pg_advisory_unlock(4242)")
    return t


def expiry_curve(b: Backend) -> dict[str, Any]:
    """The distributions of expiry lateness and SIGKILL recovery."""
    step(f"{b.name}: expiry lateness")
    ours, floor = expiry_samples(b)
    out: dict[str, Any] = {"ttl": EXPIRY_TTL, "expiry_txlock": ours, "expiry_floor": floor,
                           "expiry_floor_name": FLOOR_NAMES["expiry"]}
    if b.name != "memory":  # a memory store dies with its process: nothing to recover
        step(f"{b.name}: recovery after SIGKILL")
        rec, rec_floor = recovery_samples(b)
        out.update(recovery_txlock=rec, recovery_floor=rec_floor,
                   recovery_floor_name=FLOOR_NAMES["recovery"][b.name], liveness=LIVENESS.get(b.name))
    return out


# ---------------------------------------------------------------------- main


CURVES = {"held": held_keys_curve, "waiters": waiters_curve, "processes": processes_curve, "expiry": expiry_curve}


def _curve_child(curve: str, b: Backend, out: Any) -> None:
    try:
        out.put(CURVES[curve](b))
    except Exception as exc:  # reported to the parent, which goes on with the other curves
        out.put(repr(exc))


def isolated(curve: str, b: Backend) -> dict[str, Any] | str:
    """Measure ``curve`` of ``b`` in a process of its own, so that no curve inherits another's
    state (holds still renewed by a heartbeat, grown memory, open connections); an error
    comes back as its text."""
    out = CTX.Queue()
    child = CTX.Process(target=_curve_child, args=(curve, b, out))
    child.start()
    try:
        while True:
            with contextlib.suppress(Exception):
                return out.get(timeout=5)  # type: ignore[no-any-return]
            if not child.is_alive():
                return f"the measuring process exited with {child.exitcode}"
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()


def main(argv: list[str]) -> int:
    wanted = [a for a in argv if a in BACKENDS] or BACKENDS
    curves = [a for a in argv if a in CURVES] or list(CURVES)
    from scaling_plot import draw, markdown
    from scaling_servers import PrivatePostgres, PrivateRedis

    data: dict[str, Any] = {"machine": machine(), "quick": QUICK, "curves": {c: {} for c in curves}, "skipped": {}}
    failed: list[str] = []
    with scratch("scaling") as tmp:
        for name in wanted:
            server: Any = None
            try:
                if name == "redis":
                    server = PrivateRedis()
                elif name == "postgres":
                    server = PrivatePostgres()
            except (RuntimeError, OSError) as exc:
                data["skipped"][name] = str(exc)
                print(f"{name}: skipped ({exc})", file=sys.stderr)
                continue
            try:
                (tmp / name).mkdir()
                b = Backend(name, tmp / name, server.url if server else "", getattr(server, "statements", False))
                for curve in curves:
                    result = isolated(curve, b)
                    if isinstance(result, str):
                        failed.append(f"{name}/{curve}: {result}")
                        print(f"{name}/{curve} failed: {result}", file=sys.stderr)
                    else:
                        data["curves"][curve][name] = result
            finally:
                if server is not None:
                    server.destroy()
    if QUICK:
        out_dir = Path(os.environ.get("TXLOCK_SCALING_OUT", "/tmp/txlock-scaling-quick"))
        img_dir, md_path = out_dir, out_dir / "scaling.md"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scaling.json").write_text(json.dumps(data, indent=1))
    else:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scaling.json").write_text(json.dumps(data, indent=1))
        img_dir, md_path = Path(__file__).parent.parent / "docs" / "img", RESULTS / "scaling.md"
    images = draw(data, img_dir)
    md_path.write_text(markdown(data, images, img_dir))
    print(f"pictures: {', '.join(str(p) for p in images)}\nsection: {md_path}")
    if failed:
        print("failed curves:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
