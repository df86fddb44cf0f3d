"""``redis+sentinel://`` URLs and ``wait_replicas``: parsing, redaction, and behaviour on
private servers (a primary with a replica; a primary, a replica and a Sentinel)."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
from collections.abc import Callable

import pytest

import txlock
from _support import eventually, need_module
from lab.sentinel import SERVICE, SentinelSet, sentinel_set  # noqa: F401 (the fixture)
from plugins.redis_servers import RedisServer
from txlock import BackendUnavailable, ConfigurationError, LockLost

need_module("redis", "redis", module_level=True)

from txlock.backends.redis import RedisLockManager  # noqa: E402
from txlock.backends.redis._url import parse  # noqa: E402

# ---------------------------------------------------------------------------- URLs (no server)


def test_sentinel_url_is_parsed() -> None:
    url = "redis+sentinel://alice:s3cret@h1:26380,h2,[::1]:26381/mymaster/2?socket_timeout=5&sentinel_password=pw"
    parsed = parse(url, 32)
    assert parsed.sentinel is not None
    assert parsed.sentinel.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert parsed.sentinel.service == "mymaster"
    assert parsed.sentinel.sentinel_auth == {"password": "pw"}
    assert parsed.sentinel.server_url == "redis://alice:s3cret@/2?socket_timeout=5"
    assert set(parsed.secrets) == {"s3cret", "pw"}
    assert parsed.where == "redis+sentinel://alice:***@h1:26380,h2,[::1]:26381/mymaster/2"


def test_sentinel_url_defaults_and_tls() -> None:
    parsed = parse("rediss+sentinel://h1/svc", 32)
    assert parsed.sentinel is not None
    assert parsed.sentinel.server_url == "rediss:///0"
    assert parsed.sentinel.sentinels == (("h1", 26379),)


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1:26379",  # no service
    "redis+sentinel://h1:26379/",  # no service
    "redis+sentinel://h1:x/svc",  # bad port
    "redis+sentinel://h1:26379,,h2/svc",  # empty address
    "redis+sentinel://h1/svc/notadb",
    "redis+sentinel://h1/svc/1/extra",
    "redis+sentinel://h1/svc/1?db=2",  # contradicting dbs
    "redis+sentinel://h1/svc?bogus=1",
    "redis://h1/0?sentinel_password=x",  # a Sentinel option on a plain URL
])
def test_bad_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisLockManager(url)


def test_from_url_knows_the_sentinel_schemes() -> None:
    assert {"redis+sentinel", "rediss+sentinel"} <= set(txlock.schemes())
    manager = txlock.from_url("redis+sentinel://127.0.0.1:1/svc?wait_replicas=1")
    assert isinstance(manager, RedisLockManager)
    assert manager.wait_replicas == 1


def test_passwords_are_redacted_and_survive_pickling() -> None:
    url = "redis+sentinel://:s3cret@127.0.0.1:1,127.0.0.1:2/svc/1?sentinel_password=topsecret&wait_replicas=2"
    manager = RedisLockManager(url)
    shown = repr(manager) + str(manager)
    assert "s3cret" not in shown and "topsecret" not in shown
    assert "sentinel_password=%2A%2A%2A" in shown or "sentinel_password=***" in shown
    copy = pickle.loads(pickle.dumps(manager))
    assert copy == manager and hash(copy) == hash(manager)
    assert copy.wait_replicas == 2 and copy._parsed is not None and copy._parsed.secrets == manager._parsed.secrets  # type: ignore[union-attr]


def test_wait_options() -> None:
    manager = RedisLockManager("redis://127.0.0.1:1/0", wait_replicas=2, wait_timeout=0.5)
    assert (manager.wait_replicas, manager.wait_timeout) == (2, 0.5)
    assert "wait_replicas=2" in repr(manager) and "wait_timeout=0.5" in repr(manager)
    assert manager != RedisLockManager("redis://127.0.0.1:1/0")
    assert RedisLockManager("redis://127.0.0.1:1/0?wait_replicas=2&wait_timeout=0.5") == manager
    assert RedisLockManager("redis://127.0.0.1:1/0").wait_replicas == 0
    for bad in ({"wait_replicas": -1}, {"wait_replicas": 1.5}, {"wait_replicas": True}, {"wait_timeout": 0},
                {"wait_timeout": float("nan")}):
        with pytest.raises(ConfigurationError):
            RedisLockManager("redis://127.0.0.1:1/0", **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="contradicts"):
        RedisLockManager("redis://127.0.0.1:1/0?wait_replicas=1", wait_replicas=2)


def test_wait_replicas_is_refused_on_cluster() -> None:
    with pytest.raises(ConfigurationError, match="Cluster"):
        RedisLockManager("redis+cluster://127.0.0.1:1", wait_replicas=1)


# ---------------------------------------------------------------------------- wait_replicas


@pytest.fixture
def replicated(redis_server_factory: Callable[..., RedisServer]) -> tuple[RedisServer, RedisServer]:
    """A private primary and its replica, in sync."""
    primary = redis_server_factory()
    replica = redis_server_factory(args=("--replicaof", "127.0.0.1", str(primary.port)))

    def synced() -> bool:
        with replica.client() as client:
            return client.info("replication").get("master_link_status") == "up"

    eventually(synced, 30, "the replica to sync")
    return primary, replica


def _freeze(node: RedisServer) -> None:
    proc = node.proc
    assert proc is not None and proc.poll() is None
    with node.client() as client:
        assert int(client.info("server")["process_id"]) == proc.pid  # ours, before stopping it
    os.kill(proc.pid, signal.SIGSTOP)


def _thaw(node: RedisServer) -> None:
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGCONT)


def _replicated_holder(replica: RedisServer, manager: RedisLockManager, key: str) -> str | None:
    with replica.client() as client:
        value = client.hget(manager._keys(key)[0], "holder")
    return None if value is None else value.decode()


def test_confirmed_grants_are_on_the_replica(replicated: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = replicated
    manager = RedisLockManager(primary.url, wait_replicas=1)
    lease = manager.acquire_lease("k", "A", 0, 30)
    assert lease is not None
    # Confirmed means: the replica has it now, not eventually.
    assert _replicated_holder(replica, manager, "k") == "A"
    assert manager.renew(lease, 40).token == lease.token
    assert manager.acquire_lock("k", "A", 0, 30)  # idempotent re-acquire, confirmed too
    manager.release_lock("k", "A")


def test_unconfirmed_grant_is_withdrawn(replicated: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = replicated
    manager = RedisLockManager(primary.url, wait_replicas=1, wait_timeout=0.2)
    _freeze(replica)
    try:
        with pytest.raises(BackendUnavailable, match=r"0 of 1 replica\(s\) confirmed the grant of 'k'.*withdrawn"):
            manager.acquire_lock("k", "A", 0)
        assert not manager.is_locked("k")  # released by token: nobody is left holding it
        with pytest.raises(BackendUnavailable, match="wait_replicas"):
            asyncio.run(manager.aacquire_lock("k", "A", 0, 10))
        assert not manager.is_locked("k")
    finally:
        _thaw(replica)


def test_more_replicas_than_exist_names_the_numbers(replicated: tuple[RedisServer, RedisServer]) -> None:
    primary, _ = replicated
    manager = RedisLockManager(primary.url, wait_replicas=2, wait_timeout=0.1)
    with pytest.raises(BackendUnavailable, match=r"1 of 2 replica\(s\).*lower wait_replicas"):
        manager.acquire_lock("k", "A", 0, 10)
    assert not manager.is_locked("k")


def test_unconfirmed_renewal_fails_and_keeps_the_hold(replicated: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = replicated
    manager = RedisLockManager(primary.url, wait_replicas=1, wait_timeout=0.2)
    lease = manager.acquire_lease("k", "A", 0, 30)
    assert lease is not None
    _freeze(replica)
    try:
        with pytest.raises(BackendUnavailable, match=r"renewal of 'k'.*counts as failed"):
            manager.renew(lease, 60)
    finally:
        _thaw(replica)
    assert manager.is_lock_holder("k", "A")  # the hold itself is untouched
    manager.release_lock("k", "A")
    with pytest.raises(LockLost):
        manager.renew(lease)


def test_handed_over_lock_is_confirmed(replicated: tuple[RedisServer, RedisServer]) -> None:
    """A waiter served by a release claims the lock (and has it confirmed) before returning."""
    primary, replica = replicated
    manager = RedisLockManager(primary.url, wait_replicas=1)
    assert manager.acquire_lock("k", "A", 0, 30)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(manager.acquire_lease("k", "B", 30, 30)))
    waiter.start()
    eventually(lambda: (info := manager.inspect("k")) is not None and info.waiters == 1, 10, "B to queue")
    manager.release_lock("k", "A")
    waiter.join(30)
    assert not waiter.is_alive()
    assert got and got[0] is not None
    assert _replicated_holder(replica, manager, "k") == "B"
    manager.release_lock("k", "B")


def test_async_handed_over_lock_is_confirmed(replicated: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = replicated
    manager = RedisLockManager(primary.url, wait_replicas=1)

    async def scenario() -> None:
        assert await manager.aacquire_lock("k", "A", 0, 30)
        task = asyncio.create_task(manager.aacquire_lease("k", "B", 30, 30))
        while (info := await manager.ainspect("k")) is None or info.waiters != 1:
            await asyncio.sleep(0.005)  # polling inspectable state: is B queued?
        await manager.arelease_lock("k", "A")
        assert await asyncio.wait_for(task, 30) is not None
        await manager.aclose()

    asyncio.run(scenario())
    assert _replicated_holder(replica, manager, "k") == "B"
    manager.release_lock("k", "B")


# ---------------------------------------------------------------------------- Sentinel


def test_sentinel_url_follows_the_primary(sentinel_set: SentinelSet) -> None:  # noqa: F811
    """Sync and async callers, and a waiter woken over pub/sub, all through Sentinel; the
    same manager still works after a failover."""
    manager = RedisLockManager(sentinel_set.url(wait_replicas=1))
    assert manager.acquire_lock("k", "A", 0, 30)
    assert asyncio.run(manager.ais_lock_holder("k", "A"))
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(manager.acquire_lock("k", "B", 30, 30)))
    waiter.start()
    eventually(lambda: (info := manager.inspect("k")) is not None and info.waiters == 1, 10, "B to queue")
    manager.release_lock("k", "A")
    waiter.join(30)
    assert got == [True]
    sentinel_set.failover()
    assert manager.is_lock_holder("k", "B")  # confirmed by the replica, which is the primary now
    manager.release_lock("k", "B")
    assert asyncio.run(manager.aacquire_lock("k", "C", 0, 10))
    manager.release_lock("k", "C")
    manager.close()
    assert f"/{SERVICE}/0" in repr(manager)
