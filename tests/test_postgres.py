"""PostgreSQL-specific behaviour: storage of odd keys, schema creation, security, crash
recovery, connection loss, pgbouncer, cancellation storms and the kill test."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import txlock
from conftest import POSTGRES_URL, eventually, retire_pre_release_tables, unavailable
from plugins.postgres_servers import PgBouncer, PrivatePostgres

psycopg = pytest.importorskip("psycopg")
from txlock._types import Busy  # noqa: E402
from txlock._waiter import ThreadWaiter  # noqa: E402
from txlock.backends.postgres import SCHEMA_VERSION, PostgresLockManager  # noqa: E402

pytestmark = pytest.mark.postgres


def _uid() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def shared_url() -> str:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        unavailable(f"no PostgreSQL server at {POSTGRES_URL}: {exc}")
    retire_pre_release_tables(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture
def pg(shared_url: str) -> Iterator[PostgresLockManager]:
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:")
    yield m
    m.close()


def _catalog_checksum(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT md5(string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text, ',' ORDER BY 1))"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchone()
        roles = conn.execute("SELECT md5(string_agg(rolname, ',' ORDER BY rolname)) FROM pg_roles").fetchone()
        schemas = conn.execute("SELECT md5(string_agg(nspname, ',' ORDER BY nspname)) FROM pg_namespace").fetchone()
    assert row and roles and schemas
    return f"{row[0]}/{roles[0]}/{schemas[0]}"


def _queued(m: PostgresLockManager, key: str, count: int) -> bool:
    """Whether ``count`` calls wait in the queue of ``key`` (the public count)."""
    info = m.inspect(key)
    return info is not None and info.waiters == count


def _waiter_rows(url: str, schema: str = "txlock", table: str = "locks") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}"."{table}_waiters" WHERE expires_at > now()').fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------- keys, URLs, identity


def test_odd_keys_round_trip_and_stay_distinct(pg: PostgresLockManager) -> None:
    keys = ["", "\0", "a\0b", "\ud800", "\udfff x", "..", "/", "ключ", "🔒" * 1024, "x" * 4096]
    for i, key in enumerate(keys):
        assert pg.acquire_lock(key, f"h{i}\0\ud800", acquire_timeout=0)
    for i, key in enumerate(keys):
        assert pg.is_lock_holder(key, f"h{i}\0\ud800")
    listed = pg.list_locks()
    assert [info.key for info in listed] == sorted(keys)
    assert [info.key for info in pg.list_locks("a\0")] == ["a\0b"]
    assert [info.key for info in pg.list_locks("\udfff")] == ["\udfff x"]
    for i, key in enumerate(keys):
        pg.release_lock(key, f"h{i}\0\ud800")
    assert pg.list_locks() == []


@pytest.mark.parametrize(("change", "words"), [
    ({"user": "txlock_no_such_role"}, 'role "txlock_no_such_role" does not exist'),
    ({"dbname": "txlock_no_such_db"}, 'database "txlock_no_such_db" does not exist'),
])
def test_a_refused_role_or_database_is_a_configuration_error(
    shared_url: str, change: dict[str, str], words: str
) -> None:
    info = {**psycopg.conninfo.conninfo_to_dict(shared_url), **change}
    m = PostgresLockManager(psycopg.conninfo.make_conninfo(**info))  # type: ignore[arg-type]
    try:
        with pytest.raises(txlock.ConfigurationError, match="refused the connection") as caught:
            m.is_locked("k")
        assert words in str(caught.value) and "\n" not in str(caught.value)
        assert "check the user, password and database" in str(caught.value)
    finally:
        m.close()


def test_too_long_keys_are_refused_before_any_io(shared_url: str) -> None:
    m = PostgresLockManager("postgresql://nobody@127.0.0.1:1/none")  # unreachable: any I/O would fail
    with pytest.raises(ValueError, match="at most 4096"):
        m.acquire_lock("x" * 4097, "h")
    with pytest.raises(ValueError, match="at most 4096"):
        m.is_locked("x" * 4097)
    m.close()


def test_url_options_are_validated() -> None:
    with pytest.raises(txlock.ConfigurationError, match="unknown option"):
        txlock.from_url("postgresql://u@h/db?colour=red")
    with pytest.raises(txlock.ConfigurationError, match="identifier"):
        txlock.from_url("postgresql://u@h/db?table=locks;drop")
    with pytest.raises(txlock.ConfigurationError, match="identifier"):
        PostgresLockManager("postgresql://u@h/db", schema='a"b')
    m = txlock.from_url("postgres://u:s3cret@h:5433/db?sslmode=disable&schema=s1&table=t1&prefix=p:&liveness=3")
    assert isinstance(m, PostgresLockManager)
    assert (m.schema, m.table, m.prefix, m.liveness) == ("s1", "t1", "p:", 3.0)
    assert "s3cret" not in repr(m) and "s3cret" not in m.url and "***" in m.url
    assert txlock.from_url(m._url(redact=False)) == m
    m.close()


def test_passwords_never_appear_in_errors(caplog: pytest.LogCaptureFixture) -> None:
    m = PostgresLockManager("postgresql://u:hunter2secret@127.0.0.1:1/db")
    with pytest.raises(txlock.BackendUnavailable) as info:
        m.is_locked("k")
    assert "hunter2secret" not in str(info.value)
    assert "hunter2secret" not in repr(m)
    assert all("hunter2secret" not in r.getMessage() for r in caplog.records)
    m.close()


def test_schema_is_created_once_by_concurrent_first_users(shared_url: str) -> None:
    schema = f"txlock_test_{_uid()}"
    managers = [PostgresLockManager(shared_url, schema=schema, liveness=5 + i) for i in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(managers))

    def first_use(m: PostgresLockManager) -> None:
        try:
            start.wait()
            assert m.acquire_lock(f"k{m.liveness}", "h", acquire_timeout=0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(m,)) for m in managers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        with psycopg.connect(shared_url) as conn:
            rows = conn.execute(f'SELECT name, version FROM "{schema}".txlock_schema').fetchall()
            kind = conn.execute(
                "SELECT relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE nspname = %s AND relname = 'locks'",
                (schema,),
            ).fetchone()
        assert rows == [("locks", SCHEMA_VERSION)]
        assert kind == ("u",)  # unlogged unless durable=true
    finally:
        for m in managers:
            m.close()
        with psycopg.connect(shared_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# ---------------------------------------------------------------- security

_PAYLOADS = [
    "'",
    "''",
    "\\",
    "\\'",
    '"',
    "`",
    ";",
    "--",
    "/*",
    "*/",
    "%s",
    "%(h)s",
    "{}",
    "{T}",
    "$1",
    "$$",
    "$x$",
    "\0",
    "'; DROP TABLE txlock.locks; --",
    "'; DROP SCHEMA txlock CASCADE; --",
    "' OR '1'='1",
    "' OR 1=1 --",
    "'); DELETE FROM txlock.locks; --",
    "\"; DROP TABLE x; --",
    "'; CREATE TABLE pwned(x int); --",
    "'; CREATE ROLE pwned SUPERUSER; --",
    "'; CREATE SCHEMA pwned; --",
    "1; SELECT pg_sleep(10)",
    "' UNION SELECT usename, passwd FROM pg_shadow --",
    "$$; DROP TABLE txlock.locks; $$",
    "E'\\x27'",
    "U&'\\0027'",
    "'||(SELECT version())||'",
    "'; COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned'; --",
    "'; ALTER SYSTEM SET fsync = off; --",
    "\\x27; DROP TABLE t; --",
    "%'; --",
    "_%",
    "\n; DROP TABLE x;\n",
    "\r\n--",
    "' /* */ OR /* */ '1",
    "';NOTIFY pwned;--",
    "'; LISTEN x; --",
    "'; SELECT pg_terminate_backend(pg_backend_pid()); --",
    "'; TRUNCATE txlock.locks; --",
    "'; UPDATE txlock.locks SET holder = 'x'; --",
    "\ud800'; DROP TABLE x; --",
    "'::bytea",
    "'::text); DROP TABLE x; --",
    "pg_catalog.pg_class",
    "information_schema.tables",
]


def _payloads() -> list[str]:
    out = list(_PAYLOADS)
    for p in _PAYLOADS[:60]:
        out.append(p + p[::-1])
        out.append("key:" + p)
    return out


def test_sql_injection_payloads_leave_the_catalog_unchanged(postgres_server: PrivatePostgres) -> None:
    # On the private server, so that nobody else changes the catalog meanwhile.
    shared_url = postgres_server.url
    pg = PostgresLockManager(shared_url, prefix="inj:")
    payloads = _payloads()
    assert len(payloads) >= 100
    pg.is_locked("warm-up")  # tables exist before the first checksum
    before = _catalog_checksum(shared_url)
    for i, p in enumerate(payloads):
        assert pg.acquire_lock(p, p, acquire_timeout=0, hold_timeout=30 if i % 2 else None)
        assert pg.is_lock_holder(p, p)
        assert pg.inspect(p) is not None
        assert [info.key for info in pg.list_locks(p)][:1] == [p]
    other = PostgresLockManager(shared_url, prefix=pg.prefix + "'; DROP TABLE txlock.locks; --")
    try:
        for p in payloads[:30]:
            assert other.acquire_lock(p, p, acquire_timeout=0)
            other.release_lock(p, p)
    finally:
        other.close()
    assert len(pg.list_locks()) == len(set(payloads))
    for p in payloads:
        pg.release_lock(p, p)
    assert pg.list_locks() == []
    pg.close()
    assert _catalog_checksum(shared_url) == before


# ---------------------------------------------------------------- fairness and wake-ups


def test_waiters_are_served_in_arrival_order(pg: PostgresLockManager) -> None:
    assert pg.acquire_lock("k", "owner")
    order: list[str] = []
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (pg.acquire_lock("k", f"w{i}"), order.append(f"w{i}")))
        t.start()
        threads.append(t)
        eventually(lambda i=i: _queued(pg, "k", i + 1), what=f"w{i} to queue")  # queued, in this order
    pg.release_lock("k", "owner")
    for i in range(5):
        eventually(lambda i=i: len(order) > i, what=f"the {i + 1}th grant")
        pg.release_lock("k", order[i])
    for t in threads:
        t.join(10)
    assert order == [f"w{i}" for i in range(5)]


def test_one_listening_connection_serves_every_waiter(pg: PostgresLockManager, shared_url: str) -> None:
    assert pg.acquire_lock("k", "owner")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(pg.wait_for_lock("k", timeout=30))) for _ in range(6)]
    for t in threads:
        t.start()
    eventually(lambda: pg.waiting() == 6, what="6 watchers to register")
    listeners = [t for t in threading.enumerate() if t.name == "txlock-postgres-listen"]
    assert len(listeners) == 1
    pg.release_lock("k", "owner")
    for t in threads:
        t.join(10)
    assert results == [True] * 6


# ---------------------------------------------------------------- cancellation


def test_a_thousand_random_cancellations_leave_no_hold_and_no_waiter(
    pg: PostgresLockManager, shared_url: str
) -> None:
    rng = random.Random(6)

    async def scenario() -> None:
        assert await pg.aacquire_lock("k", "owner")
        held = True
        cancelled = 0
        while cancelled < 1000:
            tasks = [
                asyncio.ensure_future(pg.aacquire_lock("k", f"w{cancelled + i}", acquire_timeout=30))
                for i in range(20)
            ]
            if held and rng.random() < 0.3:
                await pg.arelease_lock("k", "owner")  # a grant may now land while we cancel
                held = False
            for task in tasks:
                await asyncio.sleep(rng.random() * 0.004)
                task.cancel()
            for i, task in enumerate(tasks):
                try:
                    got = await task
                except asyncio.CancelledError:
                    got = False
                if got:  # the grant won the race: the caller owns it
                    await pg.arelease_lock("k", f"w{cancelled + i}")
            cancelled += len(tasks)
            if not held:
                assert await pg.aacquire_lock("k", "owner", acquire_timeout=10)
                held = True
        await pg.arelease_lock("k", "owner")

    asyncio.run(scenario())
    assert not pg.is_locked("k")
    assert pg.list_locks() == []
    assert pg.waiting() == 0
    info_waiters = _waiter_rows(shared_url)
    assert pg.inspect("k") is None
    assert info_waiters >= 0  # other tests may be queued on the shared table
    with psycopg.connect(shared_url) as conn:
        import hashlib

        digest = hashlib.sha256((pg.prefix + "k").encode()).digest()
        row = conn.execute("SELECT count(*) FROM txlock.locks_waiters WHERE key_hash = %s", (digest,)).fetchone()
    assert row == (0,)


# ---------------------------------------------------------------- the queue: tickets never outlive their call


def _digest(prefix: str, key: str) -> bytes:
    import hashlib

    return hashlib.sha256((prefix + key).encode()).digest()


def _tickets(url: str, prefix: str, key: str, table: str = "locks") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM txlock."{table}_waiters" WHERE key_hash = %s', (_digest(prefix, key),)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _wait_take_release(url: str, key: str, holder: str) -> None:
    m = txlock.from_url(url)
    assert m.acquire_lock(key, holder, acquire_timeout=60)
    m.release_lock(key, holder)
    m.close()


def test_a_release_hands_the_lock_to_the_oldest_waiter_in_its_own_statement(shared_url: str) -> None:
    # Direct hand-off: when release_lock returns, the oldest queued call already holds the
    # key (with a new token), before its thread has even run. A 120 s liveness window rules out the
    # waiters' own re-checks (every 5 s at most): only the releases move the lock.
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:", liveness=120)
    got: dict[str, int] = {}
    go = {name: threading.Event() for name in ("B", "C")}

    def wait(name: str) -> None:
        lease = m.acquire_lease("k", name, timeout=30)
        assert lease is not None
        got[name] = lease.token
        go[name].wait(30)
        m.release_lock("k", name)

    try:
        first = m.acquire_lease("k", "A")
        assert first is not None
        threads = []
        for n, name in enumerate(("B", "C")):
            threads.append(threading.Thread(target=wait, args=(name,)))
            threads[-1].start()
            eventually(lambda n=n: _queued(m, "k", n + 1), what=f"{name} to queue")
        m.release_lock("k", "A")
        info = m.inspect("k")
        assert info is not None and info.holder == "B" and info.token > first.token and info.waiters == 1
        eventually(lambda: "B" in got, what="B to return")
        assert got["B"] == info.token
        go["B"].set()
        eventually(lambda: "C" in got, what="C to return")
        assert got["C"] > got["B"]
        go["C"].set()
        for t in threads:
            t.join(30)
        assert m.inspect("k") is None
        assert m.acquire_lock("k", "late", acquire_timeout=0)  # free, and nobody left queued
        m.release_lock("k", "late")
    finally:
        for event in go.values():
            event.set()
        m.close()


def _take_and_keep(url: str, prefix: str, ttl: float, taken: Any, done: Any) -> None:
    """Take ``k`` as B with ``ttl`` and let the hold run out (no release), until ``done``."""
    manager = PostgresLockManager(url, prefix=prefix, liveness=120)
    try:
        if manager.acquire_lease("k", "B", timeout=60, ttl=ttl) is not None:
            taken.set()
        done.wait(60)
    finally:
        manager.close()


@pytest.mark.parametrize("elsewhere", [False, True], ids=["grantee-here", "grantee-in-another-process"])
def test_a_hold_handed_to_the_waiter_ahead_and_left_to_run_out_wakes_the_next_waiter(
    shared_url: str, elsewhere: bool
) -> None:
    # Found by the clock lab: C queues behind B while A holds the key. A's release hands the
    # key to B, whose hold_timeout then runs out with no release: nothing announces that
    # end, and C had last seen A's hold (no end) and B's ticket ahead. C must be woken when
    # B's hold ends (the grant's notification arms the key's timer), not at its deadline.
    # The 120 s liveness window rules out the waiters' own re-checks; B is in C's process
    # or in another one (another listener).
    prefix = f"t{_uid()}:"
    m = PostgresLockManager(shared_url, prefix=prefix, liveness=120)
    ctx = multiprocessing.get_context("spawn")
    taken, done = ctx.Event(), ctx.Event()
    worker: Any = None
    got: dict[str, float] = {}

    def take(name: str, ttl: float | None) -> None:
        lease = m.acquire_lease("k", name, timeout=60, ttl=ttl)
        got[name] = time.monotonic() if lease is not None else -1.0

    try:
        assert m.acquire_lock("k", "A")
        if elsewhere:
            worker = ctx.Process(target=_take_and_keep, args=(shared_url, prefix, 0.3, taken, done))
            worker.start()
        else:
            threading.Thread(target=take, args=("B", 0.3)).start()
        eventually(lambda: _queued(m, "k", 1), what="B to queue")
        c = threading.Thread(target=take, args=("C", None))
        c.start()
        eventually(lambda: _queued(m, "k", 2), what="C to queue")
        released = time.monotonic()
        m.release_lock("k", "A")  # hands the key to B, who keeps it until its 0.3 s run out
        c.join(60)
        assert got.get("C", -1.0) > 0, got
        assert elsewhere or got.get("B", -1.0) > 0, got
        # A lost wake-up leaves C asleep until its 60 s deadline (or the 120 s window).
        assert got["C"] - released < 20, f"C waited {got['C'] - released:.1f}s for B's 0.3 s hold"
        m.release_lock("k", "C")
    finally:
        done.set()
        if worker is not None:
            worker.join(30)
        m.close()


def test_a_queued_call_taking_a_freed_key_itself_tells_the_calls_behind_it(shared_url: str) -> None:
    # Found by the clock lab, played step by step with the primitives: A's hold runs out
    # with B and C queued; C looks first and finds the key free but B ahead (so it sleeps
    # on B's ticket); B then takes the key with its own statement (no release hands it
    # over) and lets its 0.3 s hold run out. B's statement announces the grant, so C's
    # process wakes C when B's hold ends instead of leaving it asleep until its deadline.
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:", liveness=120)
    try:
        assert m.acquire_lock("k", "A", hold_timeout=0.3)
        b, c = ThreadWaiter(), ThreadWaiter()
        assert isinstance(m._call(m._try_acquire("k", "B", 0.3, b)), Busy)
        assert isinstance(m._call(m._try_acquire("k", "C", None, c)), Busy)
        eventually(lambda: m.inspect("k") is None, what="A's hold to run out")
        seen = m._call(m._try_acquire("k", "C", None, c))
        assert isinstance(seen, Busy) and seen.holder is None and seen.retry_after > 30, seen  # free, B ahead
        c.wait(0)  # (forget any wake-up from before)
        lease = m._call(m._try_acquire("k", "B", 0.3, b))
        assert not isinstance(lease, Busy) and lease.holder == "B"
        assert c.wait(30), "C was not woken when B's hold ran out"
        eventually(lambda: not isinstance(m._call(m._try_acquire("k", "C", None, c)), Busy), what="C to get the key")
        m.release_lock("k", "C")
    finally:
        m.close()


@pytest.mark.parametrize("notified", [True, False])
def test_a_call_giving_up_as_the_lock_is_handed_to_it_gets_the_lease(shared_url: str, notified: bool) -> None:
    # The race between a release handing the lock to a queued call and that call giving up
    # (timeout, cancellation), played step by step with the primitives: the call learns of
    # the grant from the listener (notified) or, when its notification is not there, from
    # the table; either way it gets the lease (the waiting loop keeps it on a timeout and
    # releases it on a cancellation), never leaving a hold nobody owns.
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:", liveness=120)
    try:
        assert m.acquire_lock("k", "A")
        waiter = ThreadWaiter()
        assert isinstance(m._call(m._try_acquire("k", "B", 30.0, waiter)), Busy)  # queued
        reg = waiter.data
        if not notified:
            m._store.listener.remove(reg, waiter)  # its notification will find nobody
        m.release_lock("k", "A")
        info = m.inspect("k")
        assert info is not None and info.holder == "B"
        if notified:
            eventually(lambda: waiter.lease is not None, what="the listener to hand over the lease")
        lease = m._call(m._withdraw("k", waiter))
        assert lease is not None and lease.holder == "B" and lease.token == info.token and lease.ttl == 30.0
        assert _tickets(shared_url, m.prefix, "k") == 0
        m.release_lock("k", "B")
        assert m.inspect("k") is None
    finally:
        m.close()


def test_a_hold_handed_to_a_call_that_could_not_withdraw_is_freed_by_the_heartbeat(shared_url: str) -> None:
    # A queued call gave up but its ticket could not be removed (the statement failed); a
    # release then hands it the lock. The process remembers the call and its heartbeat
    # frees that hold (and the ticket), so the key is not held forever by nobody.
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:", liveness=120)
    try:
        assert m.acquire_lock("k", "A")
        waiter = ThreadWaiter()
        assert isinstance(m._call(m._try_acquire("k", "B", None, waiter)), Busy)
        reg = waiter.data
        m._store.listener.remove(reg, waiter)
        waiter.data = None
        m._store.orphan(reg.waiter_id)  # what a failed withdrawal records
        m.release_lock("k", "A")
        info = m.inspect("k")
        assert info is not None and info.holder == "B"
        assert m._store.beat()
        assert m.inspect("k") is None
        assert _tickets(shared_url, m.prefix, "k") == 0
        assert m.acquire_lock("k", "C", acquire_timeout=0)
        m.release_lock("k", "C")
    finally:
        m.close()


def test_tables_of_a_pre_release_schema_are_refused_with_what_to_drop(shared_url: str) -> None:
    # The pre-release layouts (before version 1) are not migrated: their version table
    # (txlock_version) in the schema makes the first call fail with a ConfigurationError
    # naming the tables to drop, before anything is created. Once dropped, all is well.
    schema = f"txlock_old_{_uid()}"
    with psycopg.connect(shared_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".txlock_version (name text PRIMARY KEY, version integer NOT NULL)')
        conn.execute(f"INSERT INTO \"{schema}\".txlock_version VALUES ('locks', 3)")
        conn.execute(f'CREATE TABLE "{schema}".locks (key_hash bytea PRIMARY KEY)')
    m = PostgresLockManager(shared_url, schema=schema)
    try:
        for call in (lambda: m.acquire_lock("k", "h", acquire_timeout=0), lambda: m.is_locked("k")):
            with pytest.raises(txlock.ConfigurationError, match="pre-release txlock") as caught:
                call()
            assert f"DROP TABLE {schema}.txlock_version, {schema}.locks, {schema}.locks_waiters" in str(caught.value)
        with psycopg.connect(shared_url) as conn:
            created = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".txlock_schema',)).fetchone()
        assert created == (None,)  # refused before creating anything
        with psycopg.connect(shared_url, autocommit=True) as conn:
            conn.execute(f'DROP TABLE "{schema}".txlock_version, "{schema}".locks')
        assert m.acquire_lock("k", "h", acquire_timeout=0)
        with psycopg.connect(shared_url) as conn:
            row = conn.execute(f'SELECT name, version FROM "{schema}".txlock_schema').fetchone()
        assert row == ("locks", SCHEMA_VERSION) and SCHEMA_VERSION == 1
        m.release_lock("k", "h")
    finally:
        m.close()
        with psycopg.connect(shared_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _notifications_until_sentinel(listen: Any, chan: str, talk: Any, about: str) -> list[str]:
    """Payloads on ``chan`` naming key hash ``about``, up to a sentinel sent now from another
    connection: notifications arrive in commit order, so this is everything committed
    before the call (other tests' managers share the channel, not the key)."""
    talk.execute("SELECT pg_notify(%s, 'sentinel')", (chan,))
    seen = []
    for note in listen.notifies(timeout=30):
        if note.payload == "sentinel":
            return seen
        if note.payload.split(" ")[0] == about:
            seen.append(note.payload)
    raise AssertionError("the sentinel notification never arrived")


def test_a_release_notifies_only_when_someone_sleeps_on_the_key(shared_url: str) -> None:
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:", liveness=120)
    chan = m._store.channel
    about = m._key("k")[2]
    with psycopg.connect(shared_url, autocommit=True) as listen, psycopg.connect(shared_url, autocommit=True) as talk:
        listen.execute(f'LISTEN "{chan}"')
        try:
            for _ in range(3):  # uncontended: no NOTIFY at all (no wake-up traffic for every process)
                assert m.acquire_lock("k", "A")
                m.release_lock("k", "A")
            assert _notifications_until_sentinel(listen, chan, talk, about) == []
            assert m.acquire_lock("k", "A")
            done = threading.Event()
            t = threading.Thread(target=lambda: m.wait_for_lock("k", timeout=30) and done.set())
            t.start()
            eventually(lambda: _wake_mark(shared_url, m.prefix, "k"), what="the watcher to mark the key")
            m.release_lock("k", "A")
            assert done.wait(30)
            t.join(30)
            assert _notifications_until_sentinel(listen, chan, talk, about) == [about]  # "free", for the watcher
            assert not _wake_mark(shared_url, m.prefix, "k")  # cleared by the release that freed it
        finally:
            m.close()


def _wake_mark(url: str, prefix: str, key: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT wake FROM txlock.locks WHERE key_hash = %s", (_digest(prefix, key),)).fetchone()
    return bool(row and row[0])


def test_sleepers_are_woken_by_the_release_alone(shared_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # With the safety net pushed to 10 minutes, every return below within the 30 s timeouts
    # is a push: wait_for_lock callers by the "free" NOTIFY, queued acquirers by hand-offs.
    monkeypatch.setattr("txlock.backends.postgres.manager.SAFETY_NET", 600.0)
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:", liveness=1200)
    try:
        assert m.acquire_lock("k", "A")
        watched = []
        acquired = []

        def watch() -> None:
            watched.append(m.wait_for_lock("k", timeout=30))

        def take(name: str) -> None:
            acquired.append(m.acquire_lock("k", name, acquire_timeout=30))
            m.release_lock("k", name)

        threads = [threading.Thread(target=watch) for _ in range(3)]
        threads += [threading.Thread(target=take, args=(f"w{n}",)) for n in range(3)]
        for t in threads[:3]:
            t.start()
        eventually(lambda: m.waiting() == 3, what="the watchers to register")
        eventually(lambda: _wake_mark(shared_url, m.prefix, "k"), what="the key to be marked")
        for n, t in enumerate(threads[3:]):
            t.start()
            eventually(lambda n=n: _queued(m, "k", n + 1), what="the acquirers to queue")
        m.release_lock("k", "A")  # hand-offs through w0, w1, w2, then the key is free
        for t in threads:
            t.join(60)
        assert acquired == [True] * 3
        assert watched == [True] * 3
        assert m.inspect("k") is None
    finally:
        m.close()


def test_a_refusal_that_saw_no_holder_and_no_queue_is_retried_at_once(pg: PostgresLockManager) -> None:
    # A waiter's statement can be refused by a hold committed after its snapshot: it then
    # saw no holder and no ticket ahead, and could not mark the row for the release's
    # NOTIFY. Sleeping would wait for the safety net; the call must look again at once.
    waiter = ThreadWaiter()
    _, read = pg._try_acquire("k", "me", None, waiter)  # registers the waiter (as a real attempt does)
    try:
        refused = (None, None, None, None, None, 0, None, 123, 0, 0)
        assert read([refused]) == Busy(None, 0.0)
        held = (None, None, None, b"other", 3.0, 0, None, 123, 0, 1)
        busy = read([held])
        assert isinstance(busy, Busy) and busy.holder == "other" and busy.retry_after > 0
    finally:
        pg._call(pg._withdraw("k", waiter))


def _wait_forever(url: str, key: str) -> None:
    m = txlock.from_url(url)
    m.acquire_lock(key, "doomed-waiter", acquire_timeout=600)


def test_a_granted_waiter_leaves_no_ticket_so_the_next_acquirer_gets_a_free_key_at_once(shared_url: str) -> None:
    # Three processes: A holds, B waits, gets it, releases and exits; C then finds the key
    # free *and* no queue ticket in its way (a leaked ticket made C wait for its liveness window).
    prefix = f"t{_uid()}:"
    url = f"{shared_url}?prefix={prefix}&liveness=30"
    a = PostgresLockManager(url)
    c = PostgresLockManager(shared_url, prefix=prefix, liveness=29)  # another store: its own connections
    ctx = multiprocessing.get_context("spawn")
    try:
        assert a.acquire_lock("k", "A")
        b = ctx.Process(target=_wait_take_release, args=(url, "k", "B"))
        b.start()
        eventually(lambda: _queued(a, "k", 1) or not b.is_alive(), 60, "B to queue")
        assert b.is_alive()
        a.release_lock("k", "A")
        b.join(60)
        assert b.exitcode == 0
        assert _tickets(shared_url, prefix, "k") == 0
        assert c.acquire_lock("k", "C", acquire_timeout=0)  # one attempt: nothing queued ahead
        c.release_lock("k", "C")
    finally:
        a.close()
        c.close()


def test_a_ticket_whose_call_is_gone_is_swept_by_the_heartbeat(shared_url: str) -> None:
    # A queue ticket of this process whose call no longer waits (its removal failed, or the
    # reply of the registering statement was lost with a connection) must not block others:
    # the heartbeat renews only tickets of calls still waiting and deletes the others.
    prefix = f"t{_uid()}:"
    m = PostgresLockManager(shared_url, prefix=prefix, liveness=1.0)
    try:
        m.is_locked("k")  # tables exist
        with psycopg.connect(shared_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO txlock.locks_waiters (waiter, key_hash, ticket, owner, expires_at)"
                " VALUES (gen_random_uuid(), %s, 1, %s, now() + interval '1 second')",
                (_digest(prefix, "k"), m._store.owner),
            )
        assert not m.acquire_lock("k", "x", acquire_timeout=0)  # the orphan is ahead: refused
        started = time.monotonic()
        assert m.acquire_lock("k", "x", acquire_timeout=30)
        assert time.monotonic() - started < 10  # not stuck behind a ticket renewed forever
        assert _tickets(shared_url, prefix, "k") == 0
        m.release_lock("k", "x")
    finally:
        m.close()


def test_a_killed_waiter_stops_blocking_the_queue_at_once(shared_url: str) -> None:
    # The dead waiter's ticket has a 30 s liveness window, but its process's LISTEN session (whose
    # advisory lock the ticket names) ends with the process: the next caller is not delayed.
    prefix = f"t{_uid()}:"
    url = f"{shared_url}?prefix={prefix}&liveness=30"
    m = PostgresLockManager(url)
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_wait_forever, args=(url, "k"))
    try:
        assert m.acquire_lock("k", "owner")
        proc.start()
        eventually(lambda: _queued(m, "k", 1) or not proc.is_alive(), 60, "the doomed waiter to queue")
        assert proc.is_alive()
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join()
        m.release_lock("k", "owner")
        # Far below the ticket's 30 s liveness window:
        eventually(lambda: m.acquire_lock("k", "heir", acquire_timeout=0), 10, "the dead ticket to stop counting")
        assert _tickets(shared_url, prefix, "k") == 1  # still in the table, just not counted
        assert m.inspect("k").waiters == 0  # type: ignore[union-attr]
        m.release_lock("k", "heir")
    finally:
        m.close()
        if proc.is_alive():
            proc.kill()


# ---------------------------------------------------------------- fencing tokens


def test_tokens_survive_the_janitor_through_the_high_water_mark(shared_url: str) -> None:
    # A released row keeps its token; the janitor deletes rows released long ago, folding
    # their tokens into the table's high-water mark, so a key taken again still gets more.
    table = f"t{_uid()}"
    m = PostgresLockManager(shared_url, table=table)
    try:
        first = m.acquire_lease("k", "h", 0)
        assert first is not None
        m.release_lock("k", "h")
        far = first.token + 10**13  # a token far ahead of the server clock (in microseconds)
        with psycopg.connect(shared_url, autocommit=True) as conn:
            conn.execute(
                f"UPDATE txlock.\"{table}\" SET token = %s, expires_at = now() - interval '2 minutes'", (far,)
            )
        again = m.acquire_lease("k2", "h", 0)  # another key: seeded from the clock only
        assert again is not None and again.token < far
        m.release_lock("k2", "h")
        assert m._store.sweep()  # the janitor's one statement (normally every minute)
        with psycopg.connect(shared_url) as conn:
            left = conn.execute(f'SELECT count(*) FROM txlock."{table}" WHERE key_hash = %s', (_digest("", "k"),))
            assert left.fetchone() == (0,)  # the row is gone ...
        later = m.acquire_lease("k", "h", 0)
        assert later is not None and later.token > far  # ... but its token was not forgotten
        m.release_lock("k", "h")
    finally:
        m.close()
        with psycopg.connect(shared_url, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS txlock."{table}", txlock."{table}_waiters"')
            conn.execute("DELETE FROM txlock.txlock_schema WHERE name = %s", (table,))


# ---------------------------------------------------------------- construction


def test_the_constructor_takes_txlock_options_from_the_url_like_from_url(shared_url: str) -> None:
    url = "postgresql://u:pw@h:5433/db?sslmode=disable&schema=s1&table=t1&prefix=p:&liveness=3&acquire_timeout=7"
    m = PostgresLockManager(url)
    assert (m.schema, m.table, m.prefix, m.liveness, m._default_timeout) == ("s1", "t1", "p:", 3.0, 7.0)
    assert m == txlock.from_url(url)
    assert m._conninfo.get("sslmode") == "disable" and "schema" not in m._conninfo
    assert PostgresLockManager(url, table="t1").table == "t1"  # agreeing keywords are fine
    with pytest.raises(txlock.ConfigurationError, match="contradicts"):
        PostgresLockManager(url, table="other")
    with pytest.raises(txlock.ConfigurationError, match="unknown option"):
        PostgresLockManager("postgresql://u@h/db?colour=red")
    m.close()


def test_a_manager_on_caller_supplied_pools(shared_url: str) -> None:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    prefix = f"t{_uid()}:"
    with ConnectionPool(shared_url, min_size=1, max_size=3, open=True) as pool:  # not autocommit
        m = PostgresLockManager(pool=pool, prefix=prefix)
        other = PostgresLockManager(shared_url, prefix=prefix)
        try:
            assert m.acquire_lock("k", "a", acquire_timeout=0)
            assert other.is_lock_holder("k", "a")  # committed, seen from other connections
            got: list[bool] = []
            t = threading.Thread(target=lambda: got.append(other.acquire_lock("k", "b", acquire_timeout=30)))
            t.start()
            eventually(lambda: _queued(m, "k", 1), what="the waiter to queue")
            m.release_lock("k", "a")
            t.join(30)
            assert got == [True] and m.is_lock_holder("k", "b")
            other.release_lock("k", "b")
            import pickle

            copy = pickle.loads(pickle.dumps(m))  # rebuilt from the pool's conninfo
            assert copy == PostgresLockManager(shared_url, prefix=prefix)
            copy.close()

            async def main() -> None:
                async with AsyncConnectionPool(shared_url, min_size=1, max_size=2, open=False) as apool:
                    am = PostgresLockManager(pool=pool, async_pool=apool, prefix=prefix)
                    assert await am.aacquire_lock("k", "x", acquire_timeout=0)
                    assert await other.ais_lock_holder("k", "x")
                    await am.arelease_lock("k", "x")
                    assert am.acquire_lock("k", "y", acquire_timeout=0)  # the sync pool serves sync calls
                    am.release_lock("k", "y")
                    am.close()

            asyncio.run(main())
        finally:
            m.close()
            other.close()
        assert not pool.closed  # closing the manager leaves the caller's pool alone
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pool.get_stats().get("connections_errors", 0) == 0


# ---------------------------------------------------------------- crash recovery


def _hold_and_wait(url: str, key: str, ready: Any) -> None:
    m = txlock.from_url(url + "&liveness=1")
    assert m.acquire_lock(key, "doomed")
    ready.set()
    threading.Event().wait(600)  # until killed


def test_a_killed_process_frees_its_holds_within_the_liveness_window(shared_url: str) -> None:
    prefix = f"t{_uid()}:"
    url = f"{shared_url}?prefix={prefix}"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_and_wait, args=(url, "k", ready))
    proc.start()
    m = PostgresLockManager(shared_url, prefix=prefix, liveness=1.0)
    try:
        assert ready.wait(60)
        assert m.inspect("k") is not None and m.inspect("k").holder == "doomed"  # type: ignore[union-attr]
        assert not m.acquire_lock("k", "heir", acquire_timeout=1.5)  # the heartbeat keeps it alive
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        killed = time.monotonic()
        assert m.acquire_lock("k", "heir", acquire_timeout=10)
        assert time.monotonic() - killed <= 1.0 + 5.0  # the liveness window, plus the safety net
        m.release_lock("k", "heir")
    finally:
        m.close()
        if proc.is_alive():
            proc.kill()


def test_tokens_never_regress_across_a_server_crash(postgres_server: PrivatePostgres) -> None:
    m = PostgresLockManager(postgres_server.url, durable=True)
    try:
        tokens = []
        for _ in range(5):
            lease = m.acquire_lease("k", "h", 0)
            assert lease is not None
            tokens.append(lease.token)
            m.release_lock("k", "h")
        postgres_server.stop("immediate")  # a crash: no shutdown checkpoint
        postgres_server.start()
        lease = m.acquire_lease("k", "h", 0)
        assert lease is not None and lease.token > max(tokens)
        m.release_lock("k", "h")
    finally:
        m.close()


# ---------------------------------------------------------------- connection loss


def test_a_stopped_server_gives_backend_unavailable_and_the_next_call_recovers(
    postgres_server: PrivatePostgres,
) -> None:
    m = PostgresLockManager(postgres_server.url, liveness=30)
    try:
        assert m.acquire_lock("k", "h", hold_timeout=60)
        postgres_server.stop()
        with pytest.raises(txlock.BackendUnavailable) as info:
            m.is_locked("k")
        assert not isinstance(info.value, psycopg.Error)
        assert "PostgreSQL at postgresql://postgres@127.0.0.1" in str(info.value)
        with pytest.raises(txlock.BackendUnavailable):
            asyncio.run(m.aacquire_lock("k2", "h", acquire_timeout=0))
        with pytest.raises(txlock.BackendUnavailable):
            m.release_lock("k", "h")
        postgres_server.start()
        assert m.is_lock_holder("k", "h")  # the unlogged table survives a clean restart
        assert asyncio.run(m.ais_lock_holder("k", "h"))
        m.release_lock("k", "h")
    finally:
        m.close()


def test_terminated_connections_are_detected_and_replaced(
    postgres_server: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    m = PostgresLockManager(postgres_server.url)
    caplog.set_level(logging.WARNING, logger="txlock.postgres")
    try:
        assert m.acquire_lock("k", "owner")
        woke: list[bool] = []
        t = threading.Thread(target=lambda: woke.append(m.acquire_lock("k", "waiter", acquire_timeout=30)))
        t.start()
        eventually(lambda: _queued(m, "k", 1), what="the waiter to queue")
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                          " AND backend_type = 'client backend'")
        assert m.is_lock_holder("k", "owner")  # retried on a fresh connection
        m.release_lock("k", "owner")
        t.join(30)
        assert woke == [True]
        m.release_lock("k", "waiter")
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "closed by the server" in messages or "was lost" in messages
    finally:
        m.close()


# ---------------------------------------------------------------- pgbouncer (transaction pooling)


def test_behind_pgbouncer_in_transaction_mode_the_manager_stays_correct(
    pgbouncer: PgBouncer, postgres_server: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="txlock.postgres")
    a = PostgresLockManager(pgbouncer.url, prefix="pgb:")
    b = PostgresLockManager(pgbouncer.url, prefix="pgb:", liveness=9)  # another store: other connections
    try:
        count = 0
        inside = 0
        overlaps = 0
        errors: list[BaseException] = []

        def work(m: PostgresLockManager, name: str) -> None:
            nonlocal count, inside, overlaps
            try:
                for _ in range(30):
                    assert m.acquire_lock("k", name, acquire_timeout=60)
                    inside += 1
                    overlaps += inside != 1
                    value = count
                    threading.Event().wait(0.0005)
                    count = value + 1
                    inside -= 1
                    m.release_lock("k", name)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(a if i % 2 else b, f"w{i}")) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert overlaps == 0 and count == 180
        assert not a.is_locked("k")
        assert a._store.listener.pooled  # LISTEN detected as unusable: waiters polled
        assert "pgbouncer" in " ".join(r.getMessage() for r in caplog.records)
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- kill test and restart (stress)


def _kill_worker(url: str, keys: int, log: str, stop: str) -> None:
    m = txlock.from_url(url + "&liveness=0.5")
    rng = random.Random()
    me = os.getpid()
    with open(log, "a", buffering=1) as out:
        while not os.path.exists(stop):
            key = f"k{rng.randrange(keys)}"
            try:
                if not m.acquire_lock(key, f"p{me}", acquire_timeout=0.2):
                    continue
                out.write(f"enter {key} {me} {time.monotonic_ns()}\n")
                out.write(f"exit {key} {me} {time.monotonic_ns()}\n")
                m.release_lock(key, f"p{me}")
            except txlock.BackendUnavailable:
                continue


def _check_kill_log(lines: list[str]) -> int:
    kills: dict[str, int] = {}
    events = []
    for line in lines:
        parts = line.split()
        if len(parts) != 4:
            continue  # a line cut short by SIGKILL
        kind, key, who, t = parts
        if kind == "kill":
            kills[who] = int(t)
        else:
            events.append((int(t), kind, key, who))
    events.sort()
    inside: dict[str, str] = {}
    entered: dict[str, int] = {}
    sections = 0
    for t, kind, key, who in events:
        if kind == "enter":
            prev = inside.get(key)
            if prev is not None:
                # Only allowed if the previous holder was killed inside, before this entry.
                assert prev in kills and kills[prev] < t, f"{who} entered {key} while {prev} was inside"
            inside[key] = who
            entered[key] = t
            sections += 1
        else:
            assert inside.get(key) == who, f"{who} left {key} held by {inside.get(key)}"
            del inside[key]
    return sections


@pytest.mark.stress
@pytest.mark.timeout(300)
def test_kill_test_random_sigkill_never_breaks_exclusion(postgres_server: PrivatePostgres, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["txlock", "txlock.backends.postgres", "psycopg"])
    url = f"{postgres_server.url}?prefix=kill{_uid()}:"
    log = tmp_path / "log"
    stop = tmp_path / "stop"
    log.touch()
    rng = random.Random(7)
    procs = [ctx.Process(target=_kill_worker, args=(url, 4, str(log), str(stop))) for _ in range(4)]
    for p in procs:
        p.start()
    kills = 0
    deadline = time.monotonic() + 150
    try:
        while True:
            threading.Event().wait(rng.uniform(0.1, 0.3))  # pacing of the kills, not ordering
            entered = log.read_text().count("enter ")
            if entered >= 20_000 and kills >= 20:
                break  # both targets: a loaded machine can reach the first before the second
            assert time.monotonic() < deadline, f"too few acquisitions before the deadline: {entered}, {kills} kills"
            i = rng.randrange(len(procs))
            victim = procs[i]
            with open(log, "a") as out:
                out.write(f"kill - {victim.pid} {time.monotonic_ns()}\n")
            os.kill(victim.pid, signal.SIGKILL)
            victim.join()
            kills += 1
            procs[i] = ctx.Process(target=_kill_worker, args=(url, 4, str(log), str(stop)))
            procs[i].start()
    finally:
        stop.touch()
        for p in procs:
            if p.pid is None:
                continue
            p.join(30)
            if p.is_alive():
                p.kill()
    sections = _check_kill_log(log.read_text().splitlines())
    assert sections >= 20_000
    assert kills >= 20


def _restart_worker(url: str, log: str, stop: str, worker: int) -> None:
    m = txlock.from_url(url + "&liveness=2")
    with open(log, "a", buffering=1) as out:
        while not os.path.exists(stop):
            try:
                if not m.acquire_lock("k", f"w{worker}", acquire_timeout=1):
                    continue
            except txlock.BackendUnavailable:
                threading.Event().wait(0.05)
                continue
            out.write(f"enter {worker} {time.monotonic_ns()}\n")
            out.write(f"exit {worker} {time.monotonic_ns()}\n")
            while True:
                try:
                    m.release_lock("k", f"w{worker}")
                    break
                except txlock.BackendUnavailable:
                    threading.Event().wait(0.05)
    m.close()


@pytest.mark.stress
@pytest.mark.timeout(300)
def test_a_server_restart_during_contention_keeps_exclusion(
    postgres_server: PrivatePostgres, tmp_path: Path
) -> None:
    from _workers import check_log

    url = f"{postgres_server.url}?prefix=restart{_uid()}:"
    log = tmp_path / "log"
    stop = tmp_path / "stop"
    log.touch()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_restart_worker, args=(url, str(log), str(stop), i)) for i in range(4)]
    for p in procs:
        p.start()
    try:

        def sections() -> int:
            return log.read_text().count("enter ")

        eventually(lambda: sections() >= 200, 60, "200 critical sections")
        postgres_server.stop("fast")
        postgres_server.start()
        after = sections()
        eventually(lambda: sections() >= after + 200, 120, "200 more critical sections after the restart")
    finally:
        stop.touch()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert check_log(log.read_text().splitlines()) >= 400


def test_a_hold_handed_to_a_waiter_of_the_same_process_keeps_its_heartbeat(shared_url: str) -> None:
    # Found by the fault lab (hostile load): A releases and the release hands the key to B,
    # a waiter of the same process. B's grant and A's release are noted by two threads (the
    # listener's and A's) in either order. When B's came first, A's release made the process
    # forget that it held the key at all, the heartbeat stopped renewing B's hold, and B lost
    # it after `liveness` while still inside its critical section (NotLockHolder at release).
    m = PostgresLockManager(shared_url, prefix=f"t{_uid()}:", liveness=1.0)
    digest = m._key("k")[1]
    try:
        assert m.acquire_lock("k", "h0")
        for turn in range(1, 31):
            got: list[bool] = []
            def take(got: list[bool] = got, turn: int = turn) -> None:
                got.append(m.acquire_lock("k", f"h{turn}", acquire_timeout=30))

            t = threading.Thread(target=take)
            t.start()
            eventually(lambda: _queued(m, "k", 1), what="the waiter to queue")
            m.release_lock("k", f"h{turn - 1}")
            t.join(30)
            assert got == [True]
            # Both notes are in: whatever their order, the running hold is renewed.
            assert digest in m._store.held.digests(), f"turn {turn}: the heartbeat forgot a running hold"
        # End to end: the last holder keeps the key over several liveness windows.
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            assert m.is_lock_holder("k", "h30")
            time.sleep(0.1)  # a duration to cover, not an ordering
        m.release_lock("k", "h30")
        assert digest not in m._store.held.digests()
    finally:
        m.close()
