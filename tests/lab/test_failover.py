"""Failover (Redis Sentinel): does a lock survive the crash of the primary that granted it?

A private primary, one replica and one Sentinel run on loopback (:mod:`lab.sentinel`).
Each trial:

1. freezes the replica (SIGSTOP) and closes its replication link (``CLIENT KILL TYPE
   replica``): the replica is now behind, as a lagging or reconnecting replica is, and
   cannot catch up until it is thawed. (Closing the link alone is not enough: Redis 7
   replicas reconnect within a millisecond; freezing alone neither: the stream would wait
   in the socket buffer and reach the replica after the crash.)
2. holder A acquires the key through the ``redis+sentinel://`` URL (``hold_timeout`` far
   longer than the trial). Without ``wait_replicas`` the grant returns at once. With
   ``wait_replicas=1`` it cannot: the test sees A blocked in ``WAIT`` (the primary's
   ``blocked_clients``) and thaws the replica, which catches up and confirms the grant.
3. the primary is killed (SIGKILL, identity checked) right after the grant returned, the
   replica is thawed (if still frozen), Sentinel promotes it, the old primary comes back
   as a replica of the new one;
4. holder B (another manager, through the asyncio transport) tries the key once.

A **lost lock** is B getting the key while A's grant is still valid (A's ``hold_timeout``
counted from before its request). Every grant's fencing token must exceed every earlier
one (``token_regressions``). Without ``wait_replicas`` every trial is expected to lose the
lock (the asynchronous-replication window, made certain here); with ``wait_replicas=1``
none may. Sizes: 3 failovers per mode by default, 50 in the long run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

import txlock
from _support import eventually
from lab.report import record, scaled
from lab.sentinel import SentinelSet, sentinel_set  # noqa: F401 (the fixture)
from plugins.redis_servers import RedisServer
from txlock import BackendUnavailable, Lease, NotLockHolder

KEY = "lab:failover"
#: A's hold: far longer than a trial, so any grant to B during a trial is a lost lock.
HOLD = 120.0
#: How long a grant may wait for its replica (the replica is thawed as soon as A waits).
WAIT_TIMEOUT = 10.0
MODES = {"async": {}, "wait_replicas=1": {"wait_replicas": 1, "wait_timeout": WAIT_TIMEOUT}}


@dataclass
class Tally:
    """What the trials of one mode counted."""

    failovers: int = 0
    grants: int = 0
    unconfirmed: int = 0
    lost_locks: int = 0
    token_regressions: int = 0
    tokens: list[int] = field(default_factory=list)

    def token(self, token: int) -> None:
        """A new grant's token: it must exceed every earlier one."""
        if self.tokens and token <= max(self.tokens):
            self.token_regressions += 1
        self.tokens.append(token)


def _signal(node: RedisServer, sig: signal.Signals) -> None:
    """Send ``sig`` to a server this test started (its pid checked against the port first
    when it is running; a stopped process cannot answer, so only its Popen is checked)."""
    proc = node.proc
    assert proc is not None and proc.poll() is None, f"server on port {node.port} is not ours or not running"
    if sig is signal.SIGSTOP:
        with node.client() as client:
            answered = int(client.info("server")["process_id"])
        assert answered == proc.pid, f"port {node.port} answers with pid {answered}, not ours ({proc.pid})"
    os.kill(proc.pid, sig)


def _blocked_clients(node: RedisServer) -> int:
    with node.client() as client:
        return int(client.info("clients")["blocked_clients"])


def _trial(trio: SentinelSet, a: txlock.RedisLockManager, b: txlock.RedisLockManager, tally: Tally) -> None:
    primary, replica = trio.primary, trio.replica
    _signal(replica, signal.SIGSTOP)
    frozen = True
    try:
        trio.cut_replication()
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(a.acquire_lease, KEY, "A", 30, HOLD)
            eventually(lambda: future.done() or _blocked_clients(primary) > 0, 30,
                       "A's grant to return or to wait for its replica")
            if not future.done():  # waiting in WAIT: let the replica catch up and confirm
                _signal(replica, signal.SIGCONT)
                frozen = False
            try:
                lease: Lease | None = future.result(60)
            except BackendUnavailable:
                lease = None
        old = trio.kill_primary()  # right after the grant returned
    finally:
        if frozen:
            _signal(replica, signal.SIGCONT)
    if lease is None:
        tally.unconfirmed += 1
    else:
        tally.grants += 1
        tally.token(lease.token)
    new = trio.wait_promoted(old)
    trio.rejoin(old, new)
    tally.failovers += 1
    taken = asyncio.run(b.aacquire_lease(KEY, "B", 0, 5))
    if taken is not None:
        tally.token(taken.token)
        if lease is not None and time.monotonic() < started + HOLD:
            tally.lost_locks += 1
    for manager, holder in ((a, "A"), (b, "B")):
        with contextlib.suppress(NotLockHolder):  # the other one holds it
            manager.release_lock(KEY, holder)


@pytest.mark.timeout(scaled(110, 3600))
@pytest.mark.parametrize("mode", list(MODES))
def test_failover_lost_locks(sentinel_set: SentinelSet, mode: str) -> None:  # noqa: F811
    """Lost locks and token order across Sentinel failovers, without and with ``wait_replicas``."""
    trio = sentinel_set
    options = MODES[mode]
    a = txlock.RedisLockManager(trio.url(**options))
    b = txlock.RedisLockManager(trio.url(**options))
    assert isinstance(a, txlock.RedisLockManager)
    tally = Tally()
    try:
        for _ in range(scaled(3, 50)):
            _trial(trio, a, b, tally)
    finally:
        a.close()
        b.close()
    record("failover", "redis", mode=mode, failovers=tally.failovers, grants=tally.grants,
           unconfirmed=tally.unconfirmed, lost_locks=tally.lost_locks, token_regressions=tally.token_regressions)
    assert tally.token_regressions == 0, tally
    if mode == "async":
        # The negative control: the replica never saw the grant, so the promoted server gave the key away.
        assert tally.lost_locks > 0, tally
    else:
        assert tally.lost_locks == 0, tally
        assert tally.grants > 0, tally  # the confirmed path was exercised, not only refusals
