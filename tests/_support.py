"""Helpers every part of the test-suite shares: waiting on observable state, and skipping
for what is missing.

Importable by name from anywhere the tests run: the core suite (``conftest`` re-exports
them), the server plugins, the Prefect group and the processes it spawns. So it stays
cheap to import: pytest is imported only where a helper needs it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

#: How often :func:`eventually` looks again (it paces the polling, it orders nothing).
INTERVAL = 0.002


def unavailable(reason: str, *, module_level: bool = False) -> NoReturn:
    """Skip the test for something missing (a server, a tool, a driver), or fail it when
    ``CI`` is set: there every backend must run, none may drop out silently.

    ``module_level=True`` where a test module calls it at import (it then skips, or under
    ``CI`` fails, the whole module): the one way to write ``pytest.importorskip``."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so every backend must run)")
    pytest.skip(reason, allow_module_level=module_level)


def need_module(module: str, extra: str = "", *, module_level: bool = False) -> None:
    """Go through :func:`unavailable` unless ``module`` imports (``extra``: the txlock extra
    that brings it)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        hint = f" (install txlock[{extra}])" if extra else ""
        unavailable(f"{module} cannot be imported{hint}: {exc}", module_level=module_level)


def _timed_out(timeout: float, what: str, error: BaseException | None) -> NoReturn:
    import pytest

    last = f" (last error: {error!r})" if error is not None else ""
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}{last}")


def eventually(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    what: str = "condition",
    *,
    ignoring: type[BaseException] | tuple[type[BaseException], ...] = (),
    interval: float = INTERVAL,
) -> T:
    """Poll ``predicate`` (a state the test can inspect) until it returns something true,
    and return that; fail after ``timeout`` seconds. For waiting on observable state, never
    for ordering events.

    An exception of a type in ``ignoring`` counts as "not yet" (a server still starting);
    the last one is named if time runs out. ``interval`` paces the polling.
    """
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            error = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            _timed_out(timeout, what, error)
        time.sleep(interval)


async def aeventually(
    predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition", *, interval: float = INTERVAL
) -> T:
    """:func:`eventually` inside a coroutine: between looks it yields to the event loop
    (instead of blocking it), so that the tasks being watched run."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            _timed_out(timeout, what, None)
        await asyncio.sleep(interval)
