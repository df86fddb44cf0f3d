"""A store that accepts connections and never answers: calls end by their deadline.

The "server" is a real listening TCP socket on loopback that never reads or writes: the
kernel completes the handshake, then nothing comes back, as with a paused or wedged server
or a half-open connection. An acquire or wait with a timeout must end by that timeout plus
``DEADLINE_MARGIN`` with ``BackendUnavailable``; a call without one waits for the socket
timeout once, not once per retry.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import txlock
from conftest import need_module
from txlock._deadline import DEADLINE_MARGIN

# URL templates: {slow} is the store's own per-read (Redis) or per-connect (PostgreSQL) timeout.
STORES = [
    pytest.param("redis://127.0.0.1:{port}/0?socket_timeout={slow}", id="redis", marks=pytest.mark.redis),
    pytest.param(
        "postgresql://postgres@127.0.0.1:{port}/test?connect_timeout={slow}", id="postgres",
        marks=pytest.mark.postgres,
    ),
]
#: The store's own timeout in the deadline tests: far longer than any deadline below, so
#: a call that waited for it instead of its deadline fails the bound by seconds.
SLOW = 20
#: Scheduling slack allowed beyond deadline + margin on a loaded machine.
SLACK = 1.5


@pytest.fixture
def mute_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # connections complete in the backlog; nobody ever answers
        yield server.getsockname()[1]


def _manager(template: str, port: int, slow: float) -> txlock.BaseLockManager:
    if template.startswith("redis"):
        need_module("redis", "redis")
    else:
        need_module("psycopg", "postgres")
    return txlock.from_url(template.format(port=port, slow=slow))


def _elapsed(call: Callable[[], Any]) -> tuple[float, BaseException]:
    start = time.monotonic()
    with pytest.raises(txlock.BackendUnavailable) as caught:
        call()
    return time.monotonic() - start, caught.value


@pytest.mark.parametrize("template", STORES)
@pytest.mark.parametrize("timeout", [0, 1.0])
def test_an_acquire_with_a_timeout_ends_by_it_on_a_mute_server(template: str, mute_port: int, timeout: float) -> None:
    m = _manager(template, mute_port, SLOW)
    try:
        took, error = _elapsed(lambda: m.acquire_lock("k", "h", acquire_timeout=timeout))
        assert took < timeout + DEADLINE_MARGIN + SLACK, (took, error)
        assert "unavailable" in str(error) or "unreachable" in str(error)
        took, error = _elapsed(lambda: m.wait_for_lock("k", timeout=timeout))
        assert took < timeout + DEADLINE_MARGIN + SLACK, (took, error)
    finally:
        m.close()


@pytest.mark.parametrize("template", STORES)
def test_an_async_acquire_with_a_timeout_ends_by_it_on_a_mute_server(template: str, mute_port: int) -> None:
    m = _manager(template, mute_port, SLOW)

    async def scenario() -> None:
        start = time.monotonic()
        with pytest.raises(txlock.BackendUnavailable):
            await m.aacquire_lock("k", "h", acquire_timeout=0.5)
        assert time.monotonic() - start < 0.5 + DEADLINE_MARGIN + SLACK
        start = time.monotonic()
        with pytest.raises(txlock.BackendUnavailable):
            await m.await_for_lock("k", timeout=0.5)
        assert time.monotonic() - start < 0.5 + DEADLINE_MARGIN + SLACK
        await m.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_call_without_a_deadline_waits_for_the_socket_timeout_once(mute_port: int) -> None:
    # redis-py retried a timed-out read twice: three socket timeouts per call.
    socket_timeout = 2.0
    m = _manager(STORES[0].values[0], mute_port, socket_timeout)  # type: ignore[index]
    try:
        for call in (lambda: m.is_locked("k"), lambda: m.acquire_lock("k", "h")):
            took, error = _elapsed(call)
            assert socket_timeout * 0.9 <= took < 2 * socket_timeout, (took, error)
    finally:
        m.close()
