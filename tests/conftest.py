"""One conformance fixture for every backend.

``manager`` is built from a URL by ``txlock.from_url``; each backend is one parameter with
a marker of its name, so ``pytest -m redis`` runs one backend. A backend whose server is
missing skips with the reason, except when ``CI`` is set: there it fails, so no backend
drops out of CI silently.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

import txlock
from _support import aeventually, eventually, need_module, unavailable  # noqa: F401 (tests import them from here)

pytest_plugins = ["plugins.redis_servers", "plugins.postgres_servers"]

# The Prefect group runs in its own virtual environment (scripts/test-prefect), so that
# Prefect's dependencies never reach the core suite; the core run does not collect it.
# (``tests/prefect`` itself would satisfy a bare ``import prefect`` as a namespace package,
# so look for a module only the real Prefect has.)
try:
    _has_prefect = importlib.util.find_spec("prefect.locking") is not None
except ImportError:
    _has_prefect = False
if not _has_prefect:
    collect_ignore = ["prefect"]

T = TypeVar("T")

REDIS_URL = os.environ.get("TXLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("TXLOCK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

BACKENDS = ["memory", "file", "sqlite", "redis", "postgres", "redis_cluster"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """pytest's own report, made robust to CPython gh-106905 (3.11 before 3.11.8, 3.12 before
    3.12.1): the AST builder keeps its recursion depth in per-interpreter state, so when
    another thread parses source at the same moment (Python 3.11's ``traceback`` module
    parses each line it underlines: a background thread logging an exception is enough),
    pytest's ``ast.parse`` of the failing test's source can raise ``SystemError: AST
    constructor recursion depth mismatch``. That used to end the whole session with an
    INTERNALERROR. The race is transient, so build the report again; if it keeps failing,
    report the failure with a plain traceback instead of losing it."""
    for _ in range(5):
        try:
            return pytest.TestReport.from_item_and_call(item, call)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    style = item.config.option.tbstyle
    item.config.option.tbstyle = "line"
    try:
        return pytest.TestReport.from_item_and_call(item, call)
    finally:
        item.config.option.tbstyle = style


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


_pre_release_checked = False


def retire_pre_release_tables(url: str) -> None:
    """Drop the tables a pre-release txlock left in the shared test database's default
    schema (once per session). This txlock refuses them by design (docs/postgres.md), and
    a machine that ran the suite of an older checkout still has them: they are txlock's
    own, recognised by their ``txlock.txlock_version`` table, and hold no data but test
    locks. The default table set is dropped whole (``txlock_schema`` too, so its version
    row cannot outlive the tables); txlock recreates it on next use. Nothing else in the
    database is touched."""
    global _pre_release_checked
    if _pre_release_checked:
        return
    _pre_release_checked = True
    need_module("psycopg", "postgres")
    import psycopg

    with psycopg.connect(url.split("?", maxsplit=1)[0], autocommit=True, connect_timeout=5) as conn:
        found = conn.execute("SELECT to_regclass('txlock.txlock_version') IS NOT NULL").fetchone()
        if found and found[0]:
            sys.stderr.write(
                "\nconftest: dropping the pre-release txlock tables of the test database's schema "
                "txlock (this txlock refuses them)\n"
            )
            conn.execute(
                "DROP TABLE IF EXISTS txlock.txlock_version, txlock.txlock_schema, txlock.locks,"
                " txlock.locks_waiters"
            )


def _with_query(url: str, **options: str) -> str:
    from urllib.parse import urlencode

    sep = "&" if "?" in url else "?"
    return url + sep + urlencode(options)


def url_for(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, private namespace on backend ``name`` for one test."""
    uid = uuid.uuid4().hex[:12]
    if name == "memory":
        return f"memory://test-{uid}"
    if name == "file":
        need_module("txlock.backends.file")
        return f"file://{tmp_path}/locks"
    if name == "sqlite":
        need_module("txlock.backends.sqlite")
        return f"sqlite:///{tmp_path}/locks.db"
    if name == "redis":
        need_module("txlock.backends.redis", "redis")
        if not _reachable(REDIS_URL, 6379):
            unavailable(f"no Redis server at {REDIS_URL} (set TXLOCK_TEST_REDIS_URL)")
        return _with_query(REDIS_URL, prefix=f"txlock-test:{uid}:")
    if name == "postgres":
        need_module("txlock.backends.postgres", "postgres")
        if not _reachable(POSTGRES_URL, 5432):
            unavailable(f"no PostgreSQL server at {POSTGRES_URL} (set TXLOCK_TEST_POSTGRES_URL)")
        retire_pre_release_tables(POSTGRES_URL)
        return _with_query(POSTGRES_URL, prefix=f"t{uid}:")
    if name == "redis_cluster":
        need_module("txlock.backends.redis", "redis")
        base: str = request.getfixturevalue("redis_cluster_url")
        return _with_query(base, prefix=f"txlock-test:{uid}:")
    raise AssertionError(name)


@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in BACKENDS])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test (one parameter per backend)."""
    return str(request.param)


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming a private namespace of the backend under test."""
    return url_for(backend, request, tmp_path)


@pytest.fixture
def manager(url: str) -> Iterator[txlock.BaseLockManager]:
    """A manager on a private namespace of the backend under test."""
    m = txlock.from_url(url)
    try:
        yield m
    finally:
        m.close()


def requires(manager: txlock.BaseLockManager, capability: str) -> None:
    """Skip (with the reason) when the backend lacks ``capability``."""
    if not getattr(manager.capabilities, capability):
        pytest.skip(f"{type(manager).__name__} does not declare capability {capability!r}")


class LoopThread:
    """An event loop running in a background thread, for calling async APIs from sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, aw: Awaitable[T], timeout: float | None = 60) -> T:
        async def wrap() -> T:
            return await aw

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Api:
    """The protocol seen through one world.

    ``Api(manager, None)`` calls the sync methods; ``Api(manager, loop)`` calls the async
    twins as tasks on ``loop`` and waits for them, so one test body checks both worlds and
    concurrent callers from several threads become concurrent tasks on one loop.
    """

    def __init__(self, manager: txlock.BaseLockManager, loop: LoopThread | None) -> None:
        self.m = manager
        self.loop = loop
        self.world = "sync" if loop is None else "async"

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.loop is None:
            return getattr(self.m, name)(*args, **kwargs)
        async_name = {"wait_for_lock": "await_for_lock"}.get(name, "a" + name)
        method: Callable[..., Awaitable[Any]] = getattr(self.m, async_name)
        return self.loop.run(method(*args, **kwargs))

    def acquire_lock(self, *a: Any, **k: Any) -> bool:
        return bool(self._call("acquire_lock", *a, **k))

    def release_lock(self, *a: Any, **k: Any) -> None:
        self._call("release_lock", *a, **k)

    def is_locked(self, *a: Any, **k: Any) -> bool:
        return bool(self._call("is_locked", *a, **k))

    def is_lock_holder(self, *a: Any, **k: Any) -> bool:
        return bool(self._call("is_lock_holder", *a, **k))

    def wait_for_lock(self, *a: Any, **k: Any) -> bool:
        return bool(self._call("wait_for_lock", *a, **k))

    def acquire_lease(self, *a: Any, **k: Any) -> txlock.Lease | None:
        result: txlock.Lease | None = self._call("acquire_lease", *a, **k)
        return result

    def renew(self, *a: Any, **k: Any) -> txlock.Lease:
        result: txlock.Lease = self._call("renew", *a, **k)
        return result

    def inspect(self, *a: Any, **k: Any) -> txlock.LockInfo | None:
        result: txlock.LockInfo | None = self._call("inspect", *a, **k)
        return result

    def list_locks(self, *a: Any, **k: Any) -> list[txlock.LockInfo]:
        result: list[txlock.LockInfo] = self._call("list_locks", *a, **k)
        return result

    def force_release(self, *a: Any, **k: Any) -> bool:
        return bool(self._call("force_release", *a, **k))


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, manager: txlock.BaseLockManager, loop_thread: LoopThread) -> Api:
    """The manager under test, through the sync or the async methods."""
    return Api(manager, None if request.param == "sync" else loop_thread)
