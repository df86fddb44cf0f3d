"""What only the SQLite backend promises: files, schema, crash recovery, fork safety, kills.

The shared contract is checked by ``test_conformance*.py``; these tests add the medium's own
guarantees, with real files and real processes (killed with SIGKILL where that is the point).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import txlock
from conftest import aeventually, eventually
from txlock._options import default_sqlite_path
from txlock.backends import sqlite as backend
from txlock.backends.sqlite._schema import prefix_range

pytestmark = pytest.mark.sqlite

# The crash-recovery bound documented in docs/sqlite.md: a dead process's holds read as free
# at once; its waiters are woken by inotify within milliseconds, at the latest by the 1 s
# safety net. The tests allow generous slack on a loaded CI machine.
RECOVERY_BOUND = 1.0
SLACK = 4.0


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "locks.db")


@pytest.fixture
def m(db: str) -> Iterator[backend.SQLiteLockManager]:
    manager = backend.SQLiteLockManager(db)
    yield manager
    manager.close()


def owner_files(db: str) -> list[str]:
    """The proof-of-life files of the processes holding locks in ``db`` (see docs/sqlite.md)."""
    return sorted(glob.glob(glob.escape(db) + "-txlock/o-*"))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start a Python process running ``code`` (line-buffered stdout, stdin kept open)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )


def expect(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith(word), f"expected {word!r} from the child, got {line!r}"
    return line


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


HOLDER = """
import sys, txlock
m = txlock.from_url(sys.argv[1])
ttl = None if sys.argv[3] == "none" else float(sys.argv[3])
assert m.acquire_lock(sys.argv[2], "child", hold_timeout=ttl)
print("held", flush=True)
sys.stdin.readline()          # hold until told (or killed)
"""


# ---------------------------------------------------------------------- URLs and the default store


def test_url_forms_name_the_same_file(db: str, m: backend.SQLiteLockManager) -> None:
    for url in (f"sqlite://{db}", f"sqlite:///{db}", f"sqlite://localhost{db}"):
        other = txlock.from_url(url)
        try:
            assert other == m
            assert other.url == f"sqlite://{db}"
        finally:
            other.close()
    tuned = txlock.from_url(f"sqlite://{db}?busy_timeout=0.5&acquire_timeout=2")
    try:
        assert isinstance(tuned, backend.SQLiteLockManager)
        assert tuned.busy_timeout == 0.5
        assert txlock.from_url(tuned.url) == tuned
    finally:
        tuned.close()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite://otherhost/tmp/x.db", "names a host"),
        ("sqlite://", "has no path"),
        ("sqlite:///tmp/x.db?bogus=1", "unknown option"),
        ("sqlite:///tmp/x.db?busy_timeout=-1", "busy_timeout"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, words: str) -> None:
    with pytest.raises(txlock.ConfigurationError, match=words):
        txlock.from_url(url)


def test_memory_paths_are_refused() -> None:
    with pytest.raises(txlock.ConfigurationError, match="memory://"):
        backend.SQLiteLockManager(":memory:")


def test_default_store_lives_in_the_user_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TXLOCK_URL", raising=False)
    path = default_sqlite_path()
    assert path == str(tmp_path / "state" / "txlock" / "locks.db")
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    default = txlock.from_url()
    try:
        assert isinstance(default, backend.SQLiteLockManager)
        assert default.path == path
        assert default.acquire_lock("k", "a")
        default.release_lock("k", "a")
    finally:
        default.close()
    monkeypatch.setenv("TXLOCK_URL", "memory://elsewhere")
    assert isinstance(txlock.from_url(), txlock.MemoryLockManager)


# ---------------------------------------------------------------------- bad input never damages a file


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "locks.db"
    with pytest.raises(txlock.ConfigurationError, match=r"directory .*nope does not exist"):
        backend.SQLiteLockManager(missing)
    assert not (tmp_path / "nope").exists()


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(txlock.ConfigurationError, match="is a directory"):
        backend.SQLiteLockManager(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only directories")
def test_a_read_only_directory_is_named(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(txlock.ConfigurationError, match="not writable"):
            backend.SQLiteLockManager(ro / "locks.db")
    finally:
        ro.chmod(0o700)


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(random.Random(1).randbytes(8192))
    before = digest(str(path))
    with pytest.raises(txlock.ConfigurationError, match=r"notes\.db is not a SQLite database.*another path"):
        backend.SQLiteLockManager(path)
    assert digest(str(path)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def grant_and_release(m: backend.SQLiteLockManager, times: int, key: str = "k") -> list[int]:
    """Take and release ``key`` ``times`` times; the tokens granted."""
    tokens = []
    for _ in range(times):
        lease = m.acquire_lease(key, "a")
        assert lease is not None
        tokens.append(lease.token)
        m.release_lock(key, "a")
    return tokens


def test_a_garbage_header_with_wal_files_beside_it_is_left_untouched(tmp_path: Path) -> None:
    # SQLite, once it opens such a file, replays or deletes the -wal and -shm beside it.
    path = tmp_path / "locks.db"
    rng = random.Random(2)
    for name in ("locks.db", "locks.db-wal", "locks.db-shm"):
        (tmp_path / name).write_bytes(rng.randbytes(32768))
    before = {p.name: digest(str(p)) for p in tmp_path.iterdir()}
    with pytest.raises(txlock.ConfigurationError, match=r"is not a SQLite database \(it was left untouched"):
        backend.SQLiteLockManager(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXLOCK_")}
    done = subprocess.run([sys.executable, "-m", "txlock", "--url", f"sqlite://{path}", "ls"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 78 and "left untouched" in done.stderr, done.stderr
    assert {p.name: digest(str(p)) for p in tmp_path.iterdir()} == before


def test_a_recreated_store_never_gives_a_key_a_smaller_token(tmp_path: Path) -> None:
    # "Move it away, txlock recreates it": the new store's tokens start above the old ones.
    path = tmp_path / "locks.db"
    old = backend.SQLiteLockManager(path)
    tokens = grant_and_release(old, 50)
    old.close()
    for name in ("locks.db", "locks.db-wal", "locks.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).rename(tmp_path / f"moved-{name}")
    new = backend.SQLiteLockManager(path)
    try:
        lease = new.acquire_lease("k", "h")
        assert lease is not None and lease.token > max(tokens)
        assert tokens == sorted(set(tokens))
    finally:
        new.close()


def test_another_applications_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    cx = sqlite3.connect(path)
    cx.execute("CREATE TABLE users (name TEXT)")
    cx.execute("INSERT INTO users VALUES ('ann')")
    cx.commit()
    cx.close()
    before = digest(path)
    with pytest.raises(txlock.ConfigurationError, match=r"app\.db is a SQLite database of another application"):
        backend.SQLiteLockManager(path)
    assert digest(path) == before
    cx = sqlite3.connect(path)
    assert cx.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    cx.close()


def test_a_database_of_another_schema_version_is_refused_and_left_untouched(db: str) -> None:
    backend.SQLiteLockManager(db).close()
    cx = sqlite3.connect(db, isolation_level=None)
    cx.execute("PRAGMA user_version = 99")
    cx.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cx.close()
    before = digest(db)
    with pytest.raises(txlock.ConfigurationError, match="schema version 99, written by a newer txlock"):
        backend.SQLiteLockManager(db)
    assert digest(db) == before


def test_an_empty_file_becomes_a_lock_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with backend.SQLiteLockManager(path) as m:
        assert m.acquire_lock("k", "a")
        assert m.is_lock_holder("k", "a")


def test_a_long_transaction_elsewhere_is_a_backend_error_naming_the_file(db: str) -> None:
    m = backend.SQLiteLockManager(db, busy_timeout=0.05)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(txlock.BackendUnavailable, match=r"locks\.db stayed locked"):
            m.acquire_lock("k", "a")
        other.execute("ROLLBACK")
        assert m.acquire_lock("k", "a")
    finally:
        other.close()
        m.close()


def test_async_calls_back_off_instead_of_blocking_the_loop_on_a_busy_database(db: str) -> None:
    m = backend.SQLiteLockManager(db)
    other = sqlite3.connect(db, isolation_level=None)

    async def scenario() -> None:
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.ensure_future(m.aacquire_lock("k", "a"))
        ticks = 0
        while not task.done() and ticks < 20:  # the loop keeps running while the file is locked
            await asyncio.sleep(0.005)
            ticks += 1
        assert not task.done()
        other.execute("ROLLBACK")
        assert await asyncio.wait_for(task, 10)

    try:
        asyncio.run(scenario())
    finally:
        other.close()
        m.close()


def test_async_calls_on_a_database_locked_too_long_fail_like_sync_ones(db: str) -> None:
    # The async path retried "database is locked" forever: a release never ended.
    m = backend.SQLiteLockManager(db, busy_timeout=0.3)
    assert m.acquire_lock("k", "a")
    other = sqlite3.connect(db, isolation_level=None)

    async def scenario() -> None:
        other.execute("BEGIN IMMEDIATE")
        writes = (
            lambda: m.arelease_lock("k", "a"),
            lambda: m.aforce_release("k"),
        )
        for call in writes:  # (reads go on: WAL readers do not wait for a writer)
            with pytest.raises(txlock.BackendUnavailable, match=r"stayed locked by another connection .*busy_timeout"):
                await asyncio.wait_for(call(), 10)  # not forever
        # An acquire sees a busy database as a busy lock: its own timeout bounds the wait.
        assert not await asyncio.wait_for(m.aacquire_lock("k2", "b", acquire_timeout=0.2), 10)
        other.execute("ROLLBACK")
        await m.arelease_lock("k", "a")

    try:
        asyncio.run(scenario())
        assert not m.is_locked("k")
    finally:
        other.close()
        m.close()


# ---------------------------------------------------------------------- keys, tokens, listing


KEYS = ["", "a", "a\x00", "a\x00b", "ab", "a\ud800", "a\udfff", "\U0010ffff", "\U0010ffff\x00", "b", "é", "..", "/"]


def test_keys_with_nul_and_lone_surrogates_list_exactly(m: backend.SQLiteLockManager) -> None:
    for key in KEYS:
        assert m.acquire_lock(key, "h\ud800")
    listed = m.list_locks()
    assert [info.key for info in listed] == sorted(KEYS)
    assert {info.holder for info in listed} == {"h\ud800"}
    for prefix in ["", "a", "a\x00", "\U0010ffff", "a\ud800", "é", "zz"]:
        assert [info.key for info in m.list_locks(prefix)] == sorted(k for k in KEYS if k.startswith(prefix)), prefix


def test_prefix_bounds_on_bytes() -> None:
    assert prefix_range(b"") == (b"", None)
    assert prefix_range(b"ab") == (b"ab", b"ac")
    assert prefix_range(b"a\xff\xff") == (b"a\xff\xff", b"b")
    assert prefix_range(b"\xff") == (b"\xff", None)


def test_tokens_never_regress_across_sweeps_and_restarts(db: str, m: backend.SQLiteLockManager) -> None:
    seen = grant_and_release(m, 3)
    # Each release deleted the row (a sweep finds nothing left): the floor keeps the token.
    m._call(m._sweep())
    cx = sqlite3.connect(db)
    assert cx.execute("SELECT count(*) FROM txlock_locks").fetchone()[0] == 0
    cx.close()
    m.close()
    proc = python(
        "import sys, txlock; m = txlock.from_url(sys.argv[1]); print(m.acquire_lease('k', 'b', ttl=30).token)",
        f"sqlite://{db}",
    )
    try:
        token = int(expect(proc, ""))
    finally:
        kill(proc)
    assert seen == sorted(set(seen))
    assert token > seen[-1]


def rows(db: str) -> dict[str, int]:
    """The rows of the lock table, ``{key: token}``, read by a connection of our own."""
    cx = sqlite3.connect(db)
    try:
        return {bytes(key).decode(): int(token) for key, token in cx.execute("SELECT key, token FROM txlock_locks")}
    finally:
        cx.close()


def token_floor(db: str) -> int:
    """The table's token high-water mark (``txlock_meta.token_floor``), which seeds new rows."""
    cx = sqlite3.connect(db)
    try:
        return int(cx.execute("SELECT value FROM txlock_meta WHERE name = 'token_floor'").fetchone()[0])
    finally:
        cx.close()


def test_release_and_force_release_delete_the_row_and_tokens_keep_rising(
    db: str, m: backend.SQLiteLockManager
) -> None:
    seen = grant_and_release(m, 3)
    assert rows(db) == {}
    assert token_floor(db) == seen[-1]  # the deleted row's token, folded into the floor
    lease = m.acquire_lease("k", "a", ttl=30)
    assert lease is not None
    assert m.force_release("k")
    assert rows(db) == {}
    again = m.acquire_lease("k", "b")
    assert again is not None
    assert seen == sorted(set(seen)) and seen[-1] < lease.token < again.token
    m.release_lock("k", "b")
    m.release_lock("k", "b")  # not held any more: a no-op, as before
    assert rows(db) == {}


#: Takes and releases 100 distinct keys (timed and process-bound, alternately), closes the
#: store, prints the tokens it was granted and exits: the life of a CLI call, 100 times over.
SHORT_LIVED = """
import json, sys, txlock
m = txlock.from_url(sys.argv[1])
tokens = {}
for i in range(100):
    key = f"{sys.argv[2]}-{i}"
    lease = m.acquire_lease(key, "h", ttl=None if i % 2 else 30.0)
    assert lease is not None
    tokens[key] = lease.token
    m.release_lock(key, "h")
m.close()
print(json.dumps(tokens), flush=True)
"""


@pytest.mark.processes
def test_released_rows_do_not_accumulate_across_short_lived_processes(db: str) -> None:
    # Regression (found by the fault lab, tests/lab/test_hostile.py): free rows were swept
    # only on a process's 1024th release, so this left 500 free rows behind for good.
    procs = [python(SHORT_LIVED, f"sqlite://{db}", f"p{n}") for n in range(5)]
    granted: dict[str, int] = {}
    try:
        for proc in procs:
            granted.update(json.loads(expect(proc, "{")))
            assert proc.wait(60) == 0
    finally:
        for proc in procs:
            kill(proc)
    assert len(granted) == 500
    cx = sqlite3.connect(db)
    assert cx.execute("SELECT count(*), count(holder) FROM txlock_locks").fetchone() == (0, 0)
    cx.close()
    assert token_floor(db) >= max(granted.values())
    # Every key's row is gone; granted again, each key gets a larger token than before.
    m = backend.SQLiteLockManager(db)
    try:
        for key, token in granted.items():
            lease = m.acquire_lease(key, "again")
            assert lease is not None and lease.token > token, key
            m.release_lock(key, "again")
    finally:
        m.close()
    assert rows(db) == {}


@pytest.mark.processes
def test_close_sweeps_expired_and_dead_holds_and_keeps_live_ones(db: str) -> None:
    proc = python(HOLDER, f"sqlite://{db}", "dead", "none")
    try:
        expect(proc, "held")
    finally:
        kill(proc)  # SIGKILL: it never releases "dead"
    m = backend.SQLiteLockManager(db)
    try:
        assert m.acquire_lock("expired", "a", hold_timeout=0.001)
        assert m.acquire_lock("timed", "a", hold_timeout=60)
        assert m.acquire_lock("bound", "a")
        eventually(lambda: not m.is_locked("expired"), 5, "the 1 ms hold to expire")
        before = rows(db)
        assert set(before) == {"dead", "expired", "timed", "bound"}
    finally:
        m.close()  # the last manager of this process on the file: it sweeps
    assert set(rows(db)) == {"timed", "bound"}
    assert token_floor(db) >= max(before["dead"], before["expired"])
    again = backend.SQLiteLockManager(db)
    try:
        assert again.is_lock_holder("bound", "a") and again.is_lock_holder("timed", "a")
        for key in ("dead", "expired"):
            lease = again.acquire_lease(key, "b", timeout=0)
            assert lease is not None and lease.token > before[key], key
            again.release_lock(key, "b")
        again.release_lock("bound", "a")
        again.release_lock("timed", "a")
    finally:
        again.close()
    assert rows(db) == {}


def test_listing_skips_free_expired_and_dead_holds(db: str, m: backend.SQLiteLockManager) -> None:
    assert m.acquire_lock("free", "a")
    m.release_lock("free", "a")
    assert m.acquire_lock("expired", "a", hold_timeout=0.001)
    assert m.acquire_lock("timed", "a", hold_timeout=60)
    assert m.acquire_lock("alive", "a")
    proc = python(HOLDER, f"sqlite://{db}", "dead", "none")
    expect(proc, "held")
    assert {i.key for i in m.list_locks()} == {"timed", "alive", "dead"}
    kill(proc)
    eventually(lambda: {i.key for i in m.list_locks()} == {"alive", "timed"}, 10, "the dead hold to disappear")
    info = m.inspect("alive")
    assert info is not None
    assert info.expires_at is None
    assert info.waiters is None


# ---------------------------------------------------------------------- crash recovery and fork safety


@pytest.mark.processes
def test_holds_of_a_killed_process_end_within_the_bound(db: str, m: backend.SQLiteLockManager) -> None:
    proc = python(HOLDER, f"sqlite://{db}", "k", "none")
    expect(proc, "held")
    assert m.is_lock_holder("k", "child")
    assert not m.acquire_lock("k", "parent", acquire_timeout=0)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: m.acquire_lock("k", "parent") and got.set(), daemon=True)
    waiter.start()
    # The waiter is registered (and so sleeping on a wake-up).
    eventually(lambda: m._parked_here("k") == 1, 5, "the waiter to register")
    killed_at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    assert got.wait(RECOVERY_BOUND + SLACK), "the dead process's hold was not recovered"
    recovered = time.monotonic() - killed_at
    kill(proc)
    assert m.is_lock_holder("k", "parent")
    assert recovered < RECOVERY_BOUND + SLACK
    waiter.join(10)
    assert m._parked_here("k") == 0  # a served waiter is no longer registered for wake-ups


@pytest.mark.processes
def test_a_process_that_exits_without_releasing_frees_its_holds(db: str, m: backend.SQLiteLockManager) -> None:
    proc = python(HOLDER, f"sqlite://{db}", "k", "none")
    expect(proc, "held")
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(10)
    kill(proc)
    assert not m.is_locked("k")
    assert m.acquire_lock("k", "parent", acquire_timeout=0)


@pytest.mark.processes
def test_timed_holds_of_a_killed_process_last_their_hold_timeout(db: str, m: backend.SQLiteLockManager) -> None:
    proc = python(HOLDER, f"sqlite://{db}", "k", "30")
    expect(proc, "held")
    kill(proc)
    info = m.inspect("k")
    assert info is not None
    assert info.holder == "child"
    assert info.expires_at is not None
    assert info.expires_at > time.time() + 20


FORKER = """
import os, sys, txlock
m = txlock.from_url(sys.argv[1])
assert m.acquire_lock("parent-key", "parent")
pid = os.fork()
if pid == 0:
    # The child sees the parent's hold, takes one of its own, and exits without releasing.
    ok = m.is_lock_holder("parent-key", "parent") and m.acquire_lock("child-key", "child")
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print("child-exited", status, flush=True)
sleeper = os.fork()
if sleeper == 0:
    m.is_locked("parent-key")   # use the inherited manager, then outlive the parent
    sys.stdin.readline()
    os._exit(0)
print("sleeper", sleeper, flush=True)
sys.stdin.readline()
"""


@pytest.mark.processes
def test_a_forked_child_neither_keeps_the_parents_holds_alive_nor_ends_them(
    db: str, m: backend.SQLiteLockManager
) -> None:
    proc = python(FORKER, f"sqlite://{db}")
    sleeper = 0
    try:
        assert expect(proc, "child-exited").split()[1] == "0"
        # The child exited: its own hold ended with it, the parent's did not.
        assert m.is_lock_holder("parent-key", "parent")
        assert not m.is_locked("child-key")
        sleeper = int(expect(proc, "sleeper").split()[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The parent is dead, a forked child of it still runs: the hold ends anyway.
        os.kill(sleeper, 0)
        assert m.acquire_lock("parent-key", "me", acquire_timeout=RECOVERY_BOUND + SLACK)
    finally:
        if sleeper:
            os.kill(sleeper, signal.SIGKILL)
        kill(proc)


# ---------------------------------------------------------------------- SIGKILL in the middle of writes

ZYGOTE = """
import json, os, random, signal, sqlite3, sys, time, txlock
url, path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
keys = [f"key{i}" for i in range(6)] + ["nul\\x00", "sur\\ud800"]
rng = random.Random(7)
checker = txlock.from_url(url)
last = {}
bad = []
for i in range(rounds):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        m = txlock.from_url(url)
        own = random.Random(i)
        os.write(w, b"x")
        while True:   # nothing but write transactions, until killed
            key = own.choice(keys)
            ttl = None if own.random() < 0.8 else 0.02
            lease = m.acquire_lease(key, f"w{i}", timeout=0, ttl=ttl)
            if lease is not None:
                if own.random() < 0.3:
                    m.renew(lease, ttl)
                m.release_lock(key, f"w{i}")
            elif own.random() < 0.05:
                m.force_release(key)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    time.sleep(rng.random() * 0.004)      # randomize where the kill lands
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    cx = sqlite3.connect(path)
    check = cx.execute("PRAGMA quick_check").fetchone()[0]
    cx.close()
    if check != "ok":
        bad.append(f"round {i}: quick_check {check}")
    for key in keys:
        lease = checker.acquire_lease(key, "checker", timeout=5)
        if lease is None:
            bad.append(f"round {i}: {key!r} not usable")
            continue
        if lease.token <= last.get(key, 0):
            bad.append(f"round {i}: token of {key!r} went from {last[key]} to {lease.token}")
        last[key] = lease.token
        checker.release_lock(key, "checker")
print(json.dumps(bad), flush=True)
"""


@pytest.mark.processes
def test_sigkill_in_the_middle_of_writes_200_times_leaves_every_key_usable(db: str) -> None:
    backend.SQLiteLockManager(db).close()
    proc = subprocess.run(
        [sys.executable, "-c", ZYGOTE, f"sqlite://{db}", db, "200"],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    cx = sqlite3.connect(db)
    assert cx.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cx.close()


# ---------------------------------------------------------------------- the kill test

WORKER = """
import os, random, sys, time, txlock
url, log = sys.argv[1], sys.argv[2]
m = txlock.from_url(url)
me = f"{os.getpid()}"
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
keys = ["a", "b"]
i = 0
while True:
    key = keys[i % 2]
    i += 1
    lease = m.acquire_lease(key, me)
    os.write(fd, f"E {key} {lease.token} {me} {time.monotonic()!r}\\n".encode())
    busy = time.monotonic() + random.random() * 0.001
    while time.monotonic() < busy:   # work inside the critical section (a kill often lands here)
        pass
    os.write(fd, f"X {key} {lease.token} {me} {time.monotonic()!r}\\n".encode())
    m.release_lock(key, me)
"""


def _parse(path: Path) -> list[tuple[str, str, int, int, float]]:
    events = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:  # a line cut by SIGKILL is ignored
            try:
                events.append((parts[0], parts[1], int(parts[2]), int(parts[3]), float(parts[4])))
            except ValueError:
                continue
    return events


@pytest.mark.stress
@pytest.mark.processes
@pytest.mark.timeout(240)
def test_kill_holders_at_random_and_never_overlap(tmp_path: Path) -> None:
    db = str(tmp_path / "locks.db")
    backend.SQLiteLockManager(db).close()
    url = f"sqlite://{db}"
    log = tmp_path / "log"
    rng = random.Random(4)
    workers: list[subprocess.Popen[bytes]] = []
    killed: dict[int, float] = {}

    def spawn() -> None:
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER, url, str(log)]))

    for _ in range(4):
        spawn()
    deadline = time.monotonic() + 150
    enters = 0
    try:
        while enters < 20_000:
            assert time.monotonic() < deadline, f"only {enters} acquisitions before the deadline"
            time.sleep(0.2)  # pacing of the kills, not ordering of events
            victim = workers.pop(rng.randrange(len(workers)))
            killed[victim.pid] = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            spawn()
            enters = log.read_bytes().count(b"E ") if log.exists() else 0
    finally:
        for w in workers:
            killed[w.pid] = time.monotonic()
            w.kill()
            w.wait(10)
    events = _parse(log)
    by_token: dict[tuple[str, int], dict[str, Any]] = {}
    for kind, key, token, pid, t in events:
        entry = by_token.setdefault((key, token), {"pid": pid})
        entry[kind] = t
    overlaps, recoveries = [], []
    for key in ("a", "b"):
        spans = sorted(
            (e["E"], e.get("X", killed.get(e["pid"], float("inf"))), token, e["pid"], "X" not in e)
            for (k, token), e in by_token.items()
            if k == key and "E" in e
        )
        for (_, e1, t1, p1, died), (s2, _, t2, p2, _) in itertools.pairwise(spans):
            assert t2 > t1, f"tokens of {key!r} not increasing: {t1} then {t2}"
            if s2 < e1:
                overlaps.append((key, t1, p1, t2, p2, e1 - s2))
            if died:
                recoveries.append(s2 - e1)
    assert len(events) >= 40_000 * 0.9
    assert overlaps == []
    assert recoveries, "no holder was killed inside its critical section"
    assert max(recoveries) < RECOVERY_BOUND + SLACK
    print(f"{len(events)} events, {len(killed)} kills, {len(recoveries)} recoveries, "
          f"max {max(recoveries) * 1e3:.1f} ms, median {sorted(recoveries)[len(recoveries) // 2] * 1e3:.1f} ms")


# ---------------------------------------------------------------------- threads and tasks


def test_one_manager_shared_by_threads_excludes(m: backend.SQLiteLockManager) -> None:
    inside = 0
    worst = 0
    guard = threading.Lock()

    def work(n: int) -> None:
        nonlocal inside, worst
        for _ in range(60):
            assert m.acquire_lock("k", f"t{n}", acquire_timeout=30)
            with guard:
                inside += 1
                worst = max(worst, inside)
            with guard:
                inside -= 1
            m.release_lock("k", f"t{n}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert worst == 1


def test_async_waiters_do_not_park_a_thread_each(m: backend.SQLiteLockManager) -> None:
    async def scenario() -> None:
        assert m.acquire_lock("k", "owner")
        before = threading.active_count()
        order: list[int] = []

        async def waiter(n: int) -> None:
            assert await m.aacquire_lock("k", f"w{n}", acquire_timeout=30)
            order.append(n)
            await m.arelease_lock("k", f"w{n}")

        tasks = [asyncio.ensure_future(waiter(n)) for n in range(40)]
        await aeventually(lambda: m._parked_here("k") == 40, what="40 tasks to wait")
        assert threading.active_count() <= before + 1  # at most the one watcher thread
        m.release_lock("k", "owner")
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert sorted(order) == list(range(40))
        assert m._parked_here("k") == 0

    asyncio.run(scenario())


def test_close_keeps_holds_and_drops_the_proof_of_life_only_when_unused(db: str) -> None:
    m = backend.SQLiteLockManager(db)
    assert m.acquire_lock("k", "a")
    proof = owner_files(db)
    assert len(proof) == 1
    m.close()
    assert owner_files(db) == proof
    again = backend.SQLiteLockManager(db)
    assert again.is_lock_holder("k", "a")
    again.release_lock("k", "a")
    again.close()
    assert owner_files(db) == []


# ---------------------------------------------------------------- a crowd of waiters costs what one costs


def _count_calls(manager: backend.SQLiteLockManager, primitive: str) -> list[int]:
    """Count the calls of ``primitive`` on ``manager``, each one look at the database (the
    real primitive runs); the count is ``[0]`` of the list returned."""
    calls = [0]
    real = getattr(manager, primitive)

    def counted(*args: object) -> object:
        calls[0] += 1
        return real(*args)

    setattr(manager, primitive, counted)
    return calls


@pytest.mark.parametrize("how", ["acquire", "watch"])
def test_a_crowd_of_waiters_looks_as_often_as_one_waiter(m: backend.SQLiteLockManager, how: str) -> None:
    """While a key stays held, its async waiters of one process look at the database once
    per safety net between them (the key's timer wakes the first one), not once per waiter:
    over a window of a few safety nets, 100 waiters make a handful of looks, where a waiter
    that re-checks on a timer of its own would make hundreds. Then a release wakes one
    acquirer per hand-off (no stampede: a stampede costs a look per waiter and hand-off),
    in arrival order, or every watcher once; none is lost."""
    from txlock.backends.sqlite import _database

    crowd = 100
    window = 2.5 * _database._SAFETY_NET
    looks = _count_calls(m, "_try_acquire" if how == "acquire" else "_watch")
    served: list[int] = []

    async def waiter(index: int) -> None:
        if how == "acquire":
            assert await m.aacquire_lock("k", f"w{index}")
            served.append(index)
            await m.arelease_lock("k", f"w{index}")
        else:
            assert await m.await_for_lock("k")
            served.append(index)

    async def scenario() -> tuple[int, int]:
        assert await m.aacquire_lock("k", "holder")
        tasks = [asyncio.create_task(waiter(index)) for index in range(crowd)]
        await aeventually(lambda: m._parked_here("k") == crowd, what="the crowd parked")
        looks[0] = 0
        await asyncio.sleep(window)  # the window measured: nothing happens but the waiting
        waiting = looks[0]
        assert served == []
        looks[0] = 0
        await m.arelease_lock("k", "holder")
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return waiting, looks[0]

    waiting, draining = asyncio.run(scenario())
    assert waiting <= 2 * window / _database._SAFETY_NET + 5, f"{crowd} waiters looked {waiting} times in {window}s"
    if how == "acquire":
        assert served == list(range(crowd))  # one process: arrival order
        assert draining <= 3 * crowd + 10, f"{draining} looks for {crowd} hand-offs"
    else:
        assert sorted(served) == list(range(crowd))
        assert draining <= 2 * crowd + 10, f"{draining} looks for {crowd} watchers"
    assert m._parked_here("k") == 0
