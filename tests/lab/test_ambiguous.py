"""Ambiguous replies: the server granted a lock, the client never heard of it.

A manager talks to Redis or PostgreSQL through :class:`lab.proxy.FaultProxy`, which lets
the acquire through and loses its reply (and those of the driver's own retries). A second
manager, connected directly, then looks at what the server holds. Each trial checks:

* the call says "error" (``BackendError``) or, if it says anything else, says the truth:
  a ``Lease`` carries the token the server holds, ``None`` means no hold was left behind;
* a grant the client did not see belongs to its holder and lasts no longer than the ttl
  asked for: a direct look ``ttl + 50 ms`` after the error finds no hold of that holder
  (0 orphans older than the lease);
* while that grant lives, another holder is refused (0 double holders);
* a retry by the same holder, through the proxy, returns the very grant the server holds
  (same token: the acquire is idempotent).

Two more shapes: a reply lost on a connection that stays open (the client must give up by
its timeout plus ``DEADLINE_MARGIN``, as docs/guarantees.md promises for a mute server),
and a process-bound hold (no ttl) whose grant reply was lost, which must not outlive
``liveness`` once the manager has made its next successful call.

The shared servers of the machine are used (each test in its own key prefix); nothing here
is destructive.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

import txlock
from _support import eventually
from conftest import url_for
from lab.proxy import FaultProxy
from lab.report import percentiles, record, scaled
from txlock._deadline import DEADLINE_MARGIN

#: Hold timeout of the trials with a ttl (seconds): long enough that a trial's checks all
#: happen while the grant lives, short enough that waiting for it to end costs little.
TTL = 0.5
#: How long after the end of a grant a direct look must find it gone (the issue's bound).
ORPHAN_BOUND = 0.05
#: Rounding of the server's clock readings (Redis reports milliseconds), in seconds.
CLOCK_SLACK = 0.01
#: The acquire timeout of every trial (the key is free: the first attempt is granted).
TIMEOUT = 0.2
#: Liveness window of the proxied manager in the process-bound trials.
LIVENESS = 1.0
#: Replies the proxy loses per trial at most: the call and every retry its driver makes
#: (redis-py retries a connection error twice, txlock's PostgreSQL store once).
DROPS = 10



@dataclass
class Target:
    """One backend reached twice: ``proxied`` through the fault proxy, ``direct`` without."""

    backend: str
    proxy: FaultProxy
    proxied_url: str
    direct: txlock.BaseLockManager
    managers: list[txlock.BaseLockManager] = field(default_factory=list)

    def client(self, **options: str) -> txlock.BaseLockManager:
        """A new manager that talks through the proxy (closed at the end of the test)."""
        url = self.proxied_url + "".join(f"&{name}={value}" for name, value in options.items())
        manager = txlock.from_url(url)
        self.managers.append(manager)
        return manager


def _through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = (user + "@" if user else "") + f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The machine's Redis or PostgreSQL, in a fresh key prefix, directly and through a proxy."""
    url = url_for(request.param, request, tmp_path)
    parts = urlsplit(url)
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or (6379 if request.param == "redis" else 5432)) as proxy:
        direct = txlock.from_url(url)
        found = Target(request.param, proxy, _through(url, proxy.port), direct)
        try:
            yield found
        finally:
            for info in direct.list_locks():  # what a failed trial left in this test's prefix
                direct.force_release(info.key)
            for manager in [*found.managers, direct]:
                manager.close()


def _carrying(holder: str) -> Callable[[bytes], bool]:
    """Requests that carry ``holder`` (as raw bytes, as RESP and PostgreSQL text parameters
    carry it, or in hex, as a PostgreSQL bytea parameter may)."""
    raw = holder.encode()
    hexed = raw.hex().encode()
    return lambda chunk: raw in chunk or hexed in chunk


def _ttl_left(seen: txlock.LockInfo) -> float:
    """Seconds the hold ``seen`` has left, read just after it was seen (``inf`` when it is
    bound to a process). The servers run on this host, so their clock is ``time.time()``;
    the driver's own retries may each have renewed the grant, but none can have given it
    more than the ttl asked for."""
    return float("inf") if seen.expires_at is None else seen.expires_at - time.time()


def _free(manager: txlock.BaseLockManager, key: str) -> bool:
    """Whether ``key`` is free, as ``manager`` sees it."""
    return not manager.is_locked(key)


def _at(deadline: float) -> None:
    """Wait until the monotonic clock reads ``deadline``: the moment a bound is checked at
    (a measurement instant, not a way to order events)."""
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


@dataclass
class Tally:
    """What the trials of one test saw."""

    trials: int = 0
    errors: int = 0
    granted_unknown: int = 0  # the server applied the grant, the client saw an error
    double_holders: int = 0
    orphans: int = 0  # holds of a trial's holder found after their bound
    idempotent_retries_ok: int = 0
    inconclusive: int = 0  # a rival's attempt came too late to test exclusion
    late_checks: list[float] = field(default_factory=list)  # how late each orphan check ran
    problems: list[str] = field(default_factory=list)


def _lost_reply_trial(target: Target, client: txlock.BaseLockManager, index: int, tally: Tally,
                      watch: OrphanWatch) -> None:
    """One trial: acquire with a lost reply, then look, compete, and retry (even trials) or
    leave the grant to expire (odd trials, looked at by ``watch`` when its bound passes)."""
    key, holder, rival = f"amb-{index}", f"holder-{uuid.uuid4().hex}", f"rival-{uuid.uuid4().hex}"
    proxy = target.proxy
    before = proxy.dropped
    proxy.drop_next_reply(DROPS, when=_carrying(holder))
    started = time.monotonic()
    try:
        outcome: object = client.acquire_lease(key, holder, timeout=TIMEOUT, ttl=TTL)
    except txlock.BackendError as exc:
        outcome = exc
    finished = time.monotonic()
    proxy.pass_all()
    tally.trials += 1
    lost = proxy.dropped - before
    if lost < 1:
        tally.problems.append(f"trial {index}: the proxy lost no reply")
        return
    seen = target.direct.inspect(key)
    if seen is not None and seen.holder != holder:
        tally.problems.append(f"trial {index}: {key!r} held by {seen.holder!r}, not by the trial's holder")
        return
    if isinstance(outcome, txlock.BackendError):
        tally.errors += 1
        tally.granted_unknown += seen is not None
    elif isinstance(outcome, txlock.Lease):
        if seen is None or outcome.token != seen.token:
            tally.problems.append(f"trial {index}: returned {outcome} but the server holds {seen}")
    elif seen is not None:
        tally.problems.append(f"trial {index}: returned {outcome!r} while the server holds {seen}")
    if seen is None:
        return
    if _ttl_left(seen) > TTL + CLOCK_SLACK:
        tally.problems.append(f"trial {index}: the unseen grant has more than its ttl left: {seen}")
    # Exclusion: the grant was made after `started`, so it lives at least until started + TTL.
    tried = time.monotonic()
    other = target.direct.acquire_lease(key, rival, timeout=0, ttl=TTL)
    if other is not None:
        if tried < started + TTL:
            tally.double_holders += 1
        else:
            tally.inconclusive += 1
        target.direct.release_lock(key, rival)
        return
    if index % 2:
        watch.add(finished + TTL + ORPHAN_BOUND, key, holder)
        return
    again = client.acquire_lease(key, holder, timeout=TIMEOUT, ttl=TTL)
    if again is not None and again.token == seen.token and again.holder == holder:
        tally.idempotent_retries_ok += 1
    elif again is None or time.monotonic() < started + TTL:
        tally.problems.append(f"trial {index}: the retry returned {again}, the server held {seen}")
    if again is not None:
        client.release_lock(key, holder)
    if target.direct.inspect(key) is not None:
        tally.problems.append(f"trial {index}: {key!r} is still held after the retry's release")


class OrphanWatch:
    """Looks at each grant left to expire at the moment its bound passes, on its own thread
    (so the look is not delayed by the trial running meanwhile)."""

    def __init__(self, direct: txlock.BaseLockManager, tally: Tally) -> None:
        self.direct = direct
        self.tally = tally
        self.due: queue.SimpleQueue[tuple[float, str, str] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="orphan watch", daemon=True)
        self.thread.start()

    def add(self, due: float, key: str, holder: str) -> None:
        """Look at ``key`` at monotonic time ``due`` (added in the order of their due times)."""
        self.due.put((due, key, holder))

    def close(self) -> None:
        """Wait for every look to be done."""
        self.due.put(None)
        self.thread.join(60)
        assert not self.thread.is_alive(), "the orphan watch did not finish"

    def _run(self) -> None:
        while (item := self.due.get()) is not None:
            due, key, holder = item
            _at(due)
            self.tally.late_checks.append(time.monotonic() - due)
            try:
                seen = self.direct.inspect(key)
            except txlock.BackendError as exc:
                self.tally.problems.append(f"{key!r}: could not look at it: {exc}")
                continue
            if seen is not None and seen.holder == holder:
                self.tally.orphans += 1
                self.tally.problems.append(f"{key!r}: the unseen grant outlived its ttl by {ORPHAN_BOUND}s: {seen}")


def _warm_up(client: txlock.BaseLockManager) -> None:
    """Tables made, connections open, and the acquire and release paths run once, so that
    the trials time the faults only and a dropped reply is the grant's: on a server that
    has not cached txlock's Redis scripts yet, the first reply carrying a holder would
    otherwise be NOSCRIPT (the driver then loads the script and sends it again), and losing
    that reply loses no grant (every trial ended in an error with nothing held)."""
    holder = f"warm-up-{uuid.uuid4().hex}"
    assert client.acquire_lock("warm-up", holder, acquire_timeout=10, hold_timeout=TTL)
    client.release_lock("warm-up", holder)
    assert client.acquire_lock("warm-up", holder, acquire_timeout=10)
    client.release_lock("warm-up", holder)


def test_a_lost_acquire_reply_leaves_no_double_holder_and_no_orphan(target: Target) -> None:
    """Lost replies of acquires with a ttl (the connection cut after the server applied them):
    0 double holders, 0 orphans past the ttl, idempotent retries."""
    client = target.client()
    _warm_up(client)
    tally = Tally()
    watch = OrphanWatch(target.direct, tally)
    try:
        for index in range(scaled(50, 1000)):
            _lost_reply_trial(target, client, index, tally, watch)
    finally:
        watch.close()
    record("ambiguous", target.backend, shape="ttl", trials=tally.trials, errors=tally.errors,
           granted_unknown=tally.granted_unknown, double_holders=tally.double_holders, orphans=tally.orphans,
           idempotent_retries_ok=tally.idempotent_retries_ok, inconclusive=tally.inconclusive,
           dropped_replies=target.proxy.dropped, orphan_check_late_s=percentiles(tally.late_checks))
    assert tally.problems == []
    assert tally.double_holders == 0
    assert tally.orphans == 0
    assert tally.granted_unknown > 0  # the fault was injected where it matters: after the grant
    assert tally.idempotent_retries_ok > 0


@pytest.fixture
def silent_target(target: Target) -> Target:
    """``target`` (PostgreSQL cuts a mute connection off at the deadline: Store.deadline_guard)."""
    return target


def test_a_lost_reply_on_an_open_connection_ends_by_the_deadline(silent_target: Target) -> None:
    """The reply is swallowed and the connection kept open (a wedged server or a half-open
    connection): the acquire ends by its timeout + DEADLINE_MARGIN, and what it left behind
    is the holder's, bounded by the ttl."""
    target = silent_target
    client = target.client()
    _warm_up(client)
    bound = TIMEOUT + DEADLINE_MARGIN + 1.0  # 1 s for a busy machine
    trials = scaled(2, 20)
    late, elapsed, orphans = 0, [], 0
    for index in range(trials):
        key, holder = f"silent-{index}", f"holder-{uuid.uuid4().hex}"
        target.proxy.drop_next_reply(DROPS, cut=False, when=_carrying(holder))
        outcome: list[object] = []

        def call(key: str = key, holder: str = holder, outcome: list[object] = outcome) -> None:
            try:
                outcome.append(client.acquire_lease(key, holder, timeout=TIMEOUT, ttl=TTL))
            except txlock.BackendError as exc:
                outcome.append(exc)

        started = time.monotonic()
        worker = threading.Thread(target=call, name=f"silent acquire {index}")
        worker.start()
        worker.join(bound)
        took = time.monotonic() - started
        target.proxy.pass_all()
        if worker.is_alive():
            late += 1
            target.proxy.cut_silent()  # free the stuck call, so the test ends
            worker.join(30)
        elapsed.append(took)
        seen = target.direct.inspect(key)
        if seen is not None and (seen.holder != holder or _ttl_left(seen) > TTL + CLOCK_SLACK):
            orphans += 1
        eventually(functools.partial(_free, target.direct, key), TTL + 5, f"{key!r} to be free")
    record("ambiguous", target.backend, shape="silent", trials=trials, late_calls=late, orphans=orphans,
           call_s=percentiles(elapsed))
    assert orphans == 0
    assert late == 0, f"{late} of {trials} acquires outlived timeout + DEADLINE_MARGIN (+1 s): {elapsed}"


@pytest.fixture
def bound_target(target: Target) -> Target:
    """``target`` (PostgreSQL's heartbeat renews only the holds whose grant the process saw)."""
    return target


def test_a_lost_reply_of_a_process_bound_acquire_frees_the_key_within_liveness(bound_target: Target) -> None:
    """No ttl: the grant is bound to the process, which never learnt of it. Once the manager
    made its next successful call, the key is free again within ``liveness`` (here while the
    process's heartbeat runs for another hold, as in a worker that holds other locks)."""
    target = bound_target
    client = target.client(liveness=f"{LIVENESS:g}")
    anchor = client.acquire_lease("anchor", "anchor-holder", timeout=5)  # starts the heartbeat
    assert anchor is not None
    trials = scaled(5, 50)
    lost: list[tuple[float, str, str]] = []
    for index in range(trials):
        key, holder = f"bound-{index}", f"holder-{uuid.uuid4().hex}"
        target.proxy.drop_next_reply(DROPS, when=_carrying(holder))
        with pytest.raises(txlock.BackendError):
            client.acquire_lease(key, holder, timeout=TIMEOUT)
        target.proxy.pass_all()
        lost.append((time.monotonic(), key, holder))
        seen = target.direct.inspect(key)
        assert seen is None or seen.holder == holder
    assert client.is_locked("anchor")  # the next successful call of that manager
    after = time.monotonic()
    orphans, freed_after = 0, []
    for failed, key, holder in lost:
        _at(max(failed + LIVENESS, after) + ORPHAN_BOUND)
        seen = target.direct.inspect(key)
        if seen is not None and seen.holder == holder:
            orphans += 1
        else:
            freed_after.append(time.monotonic() - failed)
    client.release_lock("anchor", "anchor-holder")
    record("ambiguous", target.backend, shape="process_bound", trials=trials, orphans=orphans,
           liveness_s=LIVENESS, checked_after_s=percentiles(freed_after))
    assert orphans == 0, f"{orphans} of {trials} process-bound grants with a lost reply outlived liveness"
