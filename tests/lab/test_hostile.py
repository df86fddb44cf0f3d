"""Hostile load on every backend: a crowd of async waiters on one key, and a flood of
distinct keys that must leave the store as empty as it found it.

* :func:`test_hostile_waiters`: hundreds of asyncio tasks hammer one key with timed
  ``aacquire_lock`` calls while a holder takes and releases it in short holds. Every call
  returns (granted or ``False``), no task is left pending, and an in-process marker counter
  inside the critical section never sees two holders.
* :func:`test_waiting_load_is_bounded` (Redis, PostgreSQL, on private servers): the commands
  the server processes per second while a crowd waits must not grow with the crowd.
* :func:`test_distinct_keys_leave_nothing`: many distinct keys (hostile ones among them) are
  acquired and released; afterwards no key, row or file is left behind.

Sizes: :func:`lab.report.scaled` (CI: 200 waiters for ~5 s, 10,000 keys; long: 1,000
waiters for 30 s, 100,000 keys).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import txlock
from _support import eventually, need_module
from conftest import url_for
from lab.report import long_run, minutes, record, scaled

BACKENDS = ("memory", "file", "sqlite", "redis", "postgres")

#: How long a granted caller keeps the key (a short hold: the point is the crowd, not the work).
HOLD_S = 0.001
#: Waiters call ``aacquire_lock`` with a timeout drawn from this range (seconds), so that
#: some are served and some give up.
TIMEOUTS_S = (0.02, 1.0)
#: The contract bounds a call by its timeout plus this margin (``txlock._deadline``).
DEADLINE_MARGIN_S = 1.0
#: Slack on top of the contract's bound before an unfinished task counts as hung (a loaded
#: 2-core machine runs hundreds of tasks on one event loop).
HANG_SLACK_S = 10.0

#: Keys of :func:`test_distinct_keys_leave_nothing` end with one of these, so that the flood
#: also carries the names that broke peers: separators, dots, NUL, glob characters (Redis
#: ``SCAN``), Cluster hash tags, lone surrogates, wide characters.
SUFFIXES = ("", "/", "/../x", "..", "\0", "*", "?[a]", "{tag}", " ", "é", "\ud800", "🔒", "\\")


@dataclass
class Store:
    """One backend's namespace for a test, and what the test can ask its server."""

    backend: str
    url: str
    #: Commands (Redis) or transactions (PostgreSQL) the server has processed so far;
    #: ``None`` for backends without a server.
    commands: Callable[[], int] | None = None
    #: What the store still keeps for this namespace, by kind (keys, rows, files); the
    #: manager has been closed when it is called.
    leftovers: Callable[[txlock.BaseLockManager], dict[str, int]] = field(default=lambda m: {})
    #: Seconds a backend documents keeping released state before removing it.
    cleanup_s: float = 0.0


@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A private namespace on one backend; Redis and PostgreSQL on servers the test owns,
    so that their command counters and their tables hold nothing but this test's work."""
    name = str(request.param)
    uid = uuid.uuid4().hex[:10]
    if name == "memory":
        yield Store(name, f"memory://hostile-{uid}", leftovers=_memory_leftovers)
    elif name == "file":
        url = url_for(name, request, tmp_path)
        yield Store(name, url, leftovers=lambda m: _file_leftovers(Path(url.removeprefix("file://"))))
    elif name == "sqlite":
        url = url_for(name, request, tmp_path)
        yield Store(name, url, leftovers=lambda m: _sqlite_leftovers(Path(url.removeprefix("sqlite://"))))
    elif name == "redis":
        need_module("txlock.backends.redis", "redis")
        server = request.getfixturevalue("redis_server_factory")()
        client = server.client()
        try:
            yield Store(
                name, f"{server.url}?prefix=hostile:{uid}:",
                commands=lambda: int(client.info("stats")["total_commands_processed"]),
                leftovers=lambda m: {"redis_keys": int(client.dbsize())},
                cleanup_s=5.0 + 2.0,  # a released record stays until its hold's expiry (liveness)
            )
        finally:
            client.close()
    elif name == "postgres":
        need_module("txlock.backends.postgres", "postgres")
        import psycopg

        server = request.getfixturevalue("postgres_server")
        schema = f"hostile_{uid}"
        conn = psycopg.connect(server.url, autocommit=True)
        try:
            yield Store(
                name, f"{server.url}?schema={schema}",
                commands=lambda: _pg_transactions(conn),
                leftovers=lambda m: _pg_leftovers(conn, schema),
                cleanup_s=60.0 + 60.0 + 30.0,  # swept once released 60 s ago; the janitor runs every 60 s
            )
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.close()
    else:  # pragma: no cover
        raise AssertionError(name)


def _memory_leftovers(manager: txlock.BaseLockManager) -> dict[str, int]:
    """What the in-process table keeps: holds, queues, watchers (the store outlives the manager)."""
    table = manager._store  # type: ignore[attr-defined]
    return {"holds": len(table.holds), "queues": len(table.queues), "watchers": len(table.watchers)}


def _file_leftovers(directory: Path) -> dict[str, int]:
    """Entries of the lock directory beyond the fixed ones docs/file.md lists (``tokens``, ``life/``)."""
    fixed = {"tokens", "life"}
    return {"files": sum(1 for entry in directory.iterdir() if entry.name not in fixed)}


def _sqlite_leftovers(path: Path) -> dict[str, int]:
    """Rows of the lock table, read by a connection of our own."""
    with sqlite3.connect(path) as db:
        (rows,) = db.execute("SELECT count(*) FROM txlock_locks").fetchone()
    db.close()
    return {"rows": int(rows)}


def _pg_transactions(conn: Any) -> int:
    """Transactions committed and rolled back in the private server's database so far."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    return int(row[0])


def _pg_leftovers(conn: Any, schema: str) -> dict[str, int]:
    """Rows of the test's own lock and waiter tables, live holds apart."""
    rows, live = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE expires_at > now()) FROM {schema}.locks"
    ).fetchone()
    (waiters,) = conn.execute(f"SELECT count(*) FROM {schema}.locks_waiters").fetchone()
    return {"rows": int(rows), "live_rows": int(live), "waiter_rows": int(waiters)}


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Wait (yielding to the loop) until the async ``predicate`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------- the crowd


@dataclass
class Crowd:
    """What a crowd of waiters did."""

    calls: int = 0
    acquired: int = 0
    timed_out: int = 0
    errors: list[BaseException] = field(default_factory=list)
    inside: int = 0
    overlaps: int = 0
    late_s: float = 0.0  # the largest time a call took beyond its own timeout


async def churn(manager: txlock.BaseLockManager, key: str, waiters: int, seconds: float,
                seed: int) -> tuple[Crowd, int]:
    """``waiters`` tasks and one holder on ``key`` for ``seconds``; returns what they did and
    how many tasks were still pending a bounded time after the end (hung)."""
    crowd = Crowd()
    stop = asyncio.Event()

    async def visit(holder: str, timeout: float | None) -> None:
        crowd.calls += 1
        started = time.monotonic()
        try:
            granted = await manager.aacquire_lock(key, holder, acquire_timeout=timeout)
        except Exception as exc:  # counted and asserted on: a crowd must never make a call raise
            crowd.errors.append(exc)
            return
        if timeout is not None:
            crowd.late_s = max(crowd.late_s, time.monotonic() - started - timeout)
        if not granted:
            crowd.timed_out += 1
            return
        crowd.acquired += 1
        crowd.inside += 1
        if crowd.inside > 1:
            crowd.overlaps += 1
        await asyncio.sleep(HOLD_S)  # the hold itself: every other task runs meanwhile
        crowd.inside -= 1
        try:
            await manager.arelease_lock(key, holder)
        except Exception as exc:
            crowd.errors.append(exc)

    async def waiter(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        while not stop.is_set():
            await visit(f"waiter-{index}", rng.uniform(*TIMEOUTS_S))

    async def holder() -> None:
        while not stop.is_set():
            await visit("holder", None)  # no timeout: served in its turn, however long the queue

    tasks = [asyncio.create_task(waiter(i)) for i in range(waiters)]
    tasks.append(asyncio.create_task(holder()))
    await asyncio.sleep(seconds)  # the length of the run, not an ordering
    stop.set()
    _done, pending = await asyncio.wait(tasks, timeout=TIMEOUTS_S[1] + DEADLINE_MARGIN_S + HANG_SLACK_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return crowd, len(pending)


@pytest.mark.timeout(0)
def test_hostile_waiters(store: Store) -> None:
    """Every waiter of a crowd on one key acquires or times out, none hangs, and no two are
    ever inside the critical section (an in-process marker counter checks each grant)."""
    waiters = scaled(200, 1000)
    seconds = scaled(5, round(minutes(0.5) * 60))
    manager = txlock.from_url(store.url)
    try:
        crowd, hung = asyncio.run(churn(manager, "hostile", waiters, seconds, seed=7))
        assert manager.acquire_lock("hostile", "after", acquire_timeout=10), "the key stayed taken after the crowd"
        manager.release_lock("hostile", "after")
    finally:
        manager.close()
    record("hostile_waiters", store.backend, waiters=waiters, seconds=seconds, calls=crowd.calls,
           acquired=crowd.acquired, timed_out=crowd.timed_out, hung=hung, overlaps=crowd.overlaps,
           errors=len(crowd.errors), late_s=round(crowd.late_s, 3))
    assert not crowd.errors, crowd.errors[:5]
    assert hung == 0
    assert crowd.overlaps == 0
    assert crowd.acquired + crowd.timed_out == crowd.calls
    assert crowd.acquired > 0 and crowd.timed_out > 0, "the run must mix grants and time-outs"


# ---------------------------------------------------------------------------- server load while waiting


async def waiting_rate(manager: txlock.BaseLockManager, store: Store, key: str, waiters: int,
                       window: float) -> float:
    """The server's commands per second over ``window`` while ``waiters`` tasks wait on
    ``key`` held by another holder (no hand-off happens in the window); then the holder
    releases and every waiter is served in turn and releases."""
    assert store.commands is not None
    assert await manager.aacquire_lock(key, "blocker", acquire_timeout=10)

    async def wait_then_release(index: int) -> bool:
        granted = await manager.aacquire_lock(key, f"quiet-{index}", acquire_timeout=window + 120)
        if granted:
            await manager.arelease_lock(key, f"quiet-{index}")
        return granted

    tasks = [asyncio.create_task(wait_then_release(i)) for i in range(waiters)]

    async def all_queued() -> bool:
        info = await manager.ainspect(key)
        return info is not None and info.waiters == waiters

    await until(all_queued, 60, f"{waiters} waiters to queue")
    if store.backend == "postgres":
        # PostgreSQL reports the transactions of a connection that went idle up to 10 s late
        # (its statistics flush interval for idle backends): let the queueing statements
        # reach pg_stat_database before the window opens, or they land inside it.
        await asyncio.sleep(PG_STATS_SETTLE)
    before, started = await asyncio.to_thread(store.commands), time.monotonic()
    await asyncio.sleep(window)  # the measuring window
    after, ended = await asyncio.to_thread(store.commands), time.monotonic()
    await manager.arelease_lock(key, "blocker")
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60 + waiters * 0.1)
    assert all(results)
    return (after - before) / (ended - started)


#: What one waiting call may cost its server per second at most: a generous ceiling (a
#: re-check of one script or a transaction or two every couple of seconds). txlock's waiters
#: cost nothing per waiter while they wait (the per-process heartbeat keeps their queue
#: entries alive, one timer per key and process watches the hold's end, and a waiter's own
#: safety-net re-check comes after 60 s); a waiter that polls (redis-py's lock: every 0.1 s)
#: costs ten to fifty times more than this ceiling.
SAFETY_NET_CEILING = {"redis": 6.0, "postgres": 1.0}

#: Seconds PostgreSQL may take to count an idle connection's transactions (10 s, plus slack).
PG_STATS_SETTLE = 11.0


@pytest.mark.timeout(0)
@pytest.mark.parametrize(
    "store", [pytest.param(name, marks=getattr(pytest.mark, name)) for name in ("redis", "postgres")], indirect=True
)
def test_waiting_load_is_bounded(store: Store) -> None:
    """The server's load while a crowd waits does not grow with the crowd.

    The key is held throughout the window, so nothing is handed off: whatever the server
    processes is the cost of *waiting* (heartbeats, listeners, safety-net re-checks). A
    waiter woken by a push costs nothing while it sleeps; a waiter that re-checks on a timer
    costs something per waiter and per period. We measure N and 4N waiters over the same
    window and require the rate with 4N below twice the rate with N. A ratio rather than a
    ceiling in commands/s, because the fixed costs of a waiting process (heartbeat, listener,
    the measuring itself) differ per backend and machine; ``floor`` absorbs them when the
    rate with N is almost nothing. The window is longer than the heartbeat's period, so a
    keep-alive per waiter would show.

    Two levels: the cost of each extra waiter must stay under the backend's documented
    safety net (:data:`SAFETY_NET_CEILING`: a hard failure, it catches busy polling); the
    strict property (no growth at all): the keep-alive of queued calls belongs to the
    per-process heartbeat, and the end of a hold is watched once per key and process.
    """
    small = scaled(50, 250)
    window = scaled(6, 20)
    floor = 5.0  # commands/s: the fixed cost of one process waiting (heartbeat, measuring)
    manager = txlock.from_url(store.url)
    try:
        rate_n = asyncio.run(waiting_rate(manager, store, "quiet", small, window))
        rate_4n = asyncio.run(waiting_rate(manager, store, "quiet", 4 * small, window))
    finally:
        manager.close()
    per_waiter = max(0.0, rate_4n - rate_n) / (3 * small)
    record("hostile_waiters", store.backend, waiters=4 * small, window_s=window, N=small,
           commands_per_s_N=round(rate_n, 1), commands_per_s_4N=round(rate_4n, 1),
           commands_per_s_per_waiter=round(per_waiter, 3))
    figures = f"{rate_n:.1f}/s with {small} waiters, {rate_4n:.1f}/s with {4 * small} ({per_waiter:.2f}/s per waiter)"
    assert per_waiter <= SAFETY_NET_CEILING[store.backend], f"{store.backend} waiters poll: {figures}"
    assert rate_4n < 2 * max(rate_n, floor), f"{store.backend}: the load grows with the crowd: {figures}"


# ---------------------------------------------------------------------------- distinct keys


async def flood(manager: txlock.BaseLockManager, count: int, concurrency: int) -> None:
    """Acquire and release ``count`` distinct keys, ``concurrency`` at a time."""

    async def one(index: int) -> None:
        key = f"distinct:{index}" + SUFFIXES[index % len(SUFFIXES)]
        assert await manager.aacquire_lock(key, f"h{index}", acquire_timeout=30)
        await manager.arelease_lock(key, f"h{index}")

    for start in range(0, count, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(start + concurrency, count))))


@pytest.mark.timeout(0)
def test_distinct_keys_leave_nothing(store: Store) -> None:
    """After many distinct keys (hostile names among them) are acquired and released, the
    store is back to empty: no key (Redis, the whole private server), no row (SQLite; the
    test's own PostgreSQL schema), no per-key file (file backend: only ``tokens`` and
    ``life/`` stay), nothing in the in-process table (memory).

    "Afterwards" is each backend's documented clean-up: at once for SQLite (a release deletes
    its row); at ``close()`` for the file backend (its collector also runs then); the expiry
    of the released hold's record for Redis (``liveness``); the janitor for PostgreSQL, which
    keeps a released row for a minute as the key's token high-water mark and sweeps every
    minute: the short run cannot wait for it, so there it checks that no hold and no queue
    ticket remains (every row left is a released one), and the long run waits for the sweep
    and requires 0 rows.
    """
    keys = scaled(10_000, 100_000)
    manager = txlock.from_url(store.url)
    try:
        asyncio.run(flood(manager, keys, concurrency=16))
        assert manager.list_locks() == []
        if store.backend == "postgres" and long_run():
            eventually(lambda: store.leftovers(manager)["rows"] == 0, store.cleanup_s, "the janitor's sweep",
                       interval=1.0)
    finally:
        manager.close()
    if store.backend == "redis":
        eventually(lambda: sum(store.leftovers(manager).values()) == 0, store.cleanup_s,
                   "released records to expire", interval=0.1)
    left = store.leftovers(manager)
    pending = 0
    if store.backend == "postgres" and not long_run():
        pending = left.pop("rows") - left["live_rows"]  # released rows the janitor sweeps a minute later
    record("distinct_keys", store.backend, keys=keys, left_behind=sum(left.values()), pending_janitor=pending,
           **left)
    assert sum(left.values()) == 0, left
