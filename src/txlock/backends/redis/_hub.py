"""What one process shares per Redis server: the wake-up listener and the heartbeat.

The listener is one pub/sub connection and thread per process and server, subscribed to a
channel of its own (``txlock:wake:<random>``). A script that hands a lock to a queued
waiter publishes the grant there (``g <waiter id> <token> <now ms> <life ms>``); one that
frees a key a ``wait_for_lock`` call watches publishes ``f <waiter id>``. The listener wakes
that waiter, whatever its world (a thread or an event-loop task).

The heartbeat is one job on txlock's scheduler thread, one script call per beat (per slot on
Cluster) for everything the process keeps alive: it renews the process-bound holds, and the
queue entries and watcher registrations of the calls that wait, so a waiting call costs the
server nothing while it sleeps. A waiting key's hold can also end without a message (its
``hold_timeout`` passes, or its process died): per key, one timer of the lease-watch thread
wakes one local waiter when the hold's time is up, and that waiter's look hands the key on.
The cost of waiting is thus per process and key, never per waiting call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeAlias

from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from txlock import _scheduler
from txlock._deadline import call_budget
from txlock._errors import BackendUnavailable
from txlock._per_process import PerProcess
from txlock._types import Lease
from txlock._waiter import Waiter
from txlock._waitlist import HoldTimers, WaiterTable
from txlock.backends.redis._connection import DRIVER_ERRORS, translate
from txlock.backends.redis._requests import lease_of
from txlock.backends.redis._scripts import HEARTBEAT

__all__ = ["Hub", "WaitState", "hubs"]

log = logging.getLogger("txlock.redis")

#: Longest wait for the wake-up subscription before a waiter queues in Redis.
SUBSCRIBE_WAIT = 10.0
#: Seconds a listener with no local waiters stays subscribed.
LISTENER_IDLE = 10.0
#: Hold keys per heartbeat script on a single server (Cluster: one call per slot).
HEARTBEAT_BATCH = 1000
#: Waiting calls of one key per unit of the heartbeat script (bounds its Lua stack).
WAITERS_PER_UNIT = 500
#: Longest sleep of a waiting call without a wake-up: a last resort only. Its queue entry is
#: kept by the heartbeat, which also wakes it if the entry is gone (a lost grant message);
#: the end of the hold is watched per key; a reconnected listener wakes every waiter.
SAFETY_NET = 60.0


class WaitState:
    """What a queued waiter (or ``wait_for_lock`` watcher) carries in ``Waiter.data``: what
    the listener needs to turn a grant pushed by a release into the waiter's lease."""

    __slots__ = ("entry", "hold_key", "holder", "hub", "key", "liveness_ms", "queued", "ttl", "waiter_id")

    def __init__(
        self, hub: Hub, waiter_id: str, key: str, hold_key: bytes, holder: str | None, ttl: float | None,
        liveness_ms: int,
    ) -> None:
        self.hub = hub
        self.waiter_id = waiter_id
        self.key = key
        self.hold_key = hold_key
        self.holder = holder  # None for a wait_for_lock watcher
        self.ttl = ttl
        self.liveness_ms = liveness_ms
        #: A watcher's entry in the key's watcher set: where to tell it the key is free.
        self.entry = "" if holder is not None else f"{hub.channel} {waiter_id}"
        #: Its queue entry (acquirer) or watcher registration exists in Redis: the
        #: heartbeat keeps it alive.
        self.queued = False


class Hub:
    """The wake-up listener and the heartbeat of this process for one Redis server.

    Its waiter table is keyed by waiter id: the server picks the waiter a message is for
    (the head of the key's queue), so each id is a channel with one waiter.
    """

    def __init__(
        self, make_client: Callable[[], Any], where: str, secrets: tuple[str, ...], cluster: bool,
        wait_replicas: int = 0, wait_timeout: float = 1.0,
    ) -> None:
        self._make_client = make_client
        #: With ``wait_replicas``, a lock handed over by a release is claimed by the waiter
        #: (a round trip, then the replicas' confirmation), not taken from the message; and
        #: a heartbeat counts only once that many replicas confirm it.
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.where = where
        self._secrets = secrets
        self.cluster = cluster
        self.channel = f"txlock:wake:{uuid.uuid4().hex}"
        self.lock = threading.Lock()
        self.waiters: WaiterTable[str, WaitState] = WaiterTable()
        #: The waiting calls by the hold key they wait on, in arrival order (under ``lock``).
        self.waiting: dict[bytes, dict[Waiter, WaitState]] = {}
        #: Per waiting key: when (``time.monotonic()``) its hold runs out as last seen, and
        #: the lease-watch job that wakes a local waiter then (under ``lock``).
        self._timers: HoldTimers[bytes] = HoldTimers(
            self.lock, "txlock redis hold end", lambda hold_key: bool(self.waiting.get(hold_key)), self._wake_first
        )
        self._ids = itertools.count(1)
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.holds: dict[bytes, tuple[bytes, int]] = {}  # hold key -> (token, liveness ms)
        #: Hold key -> its holder. A release drops the hold only if it is still its own: the
        #: release may have handed the key to a waiter of this process whose grant was noted
        #: first (by the listener's thread), and that hold must stay under the heartbeat.
        self.holders: dict[bytes, str] = {}
        self._renewed: dict[bytes, float] = {}  # hold key -> last successful renewal (monotonic)
        self._failing = False
        #: When (``time.monotonic()``) the last heartbeat that renewed every hold was sent.
        self.last_beat = -math.inf
        self._job: _scheduler.Job | None = None
        self._interval = math.inf
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            with self.lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    # -- waiters and the listener

    def add(
        self, waiter: Waiter, key: str, hold_key: bytes, holder: str | None, ttl: float | None, liveness_ms: int
    ) -> WaitState:
        """Register ``waiter`` (an acquirer of ``holder``, or a watcher when ``None``)."""
        state = WaitState(self, f"{self.channel[12:]}:{next(self._ids)}", key, hold_key, holder, ttl, liveness_ms)
        waiter.data = state
        with self.lock:  # not while the listener decides it is idle
            self.waiters.add(state.waiter_id, waiter, state)
            self.waiting.setdefault(hold_key, {})[waiter] = state
        return state

    def forget(self, waiter: Waiter, state: WaitState) -> None:
        self.waiters.discard(state.waiter_id, waiter)
        waiter.data = None
        with self.lock:
            local = self.waiting.get(state.hold_key)
            if local is not None and local.pop(waiter, None) is not None and not local:
                del self.waiting[state.hold_key]
                self._timers.cancel(state.hold_key)

    def queued(self, state: WaitState, seconds_left: float) -> None:
        """A look of ``state``'s call found the key held for ``seconds_left`` more seconds
        (as far as the server knows now), and left the call queued (or registered as a
        watcher): keep that alive with the heartbeat, and look again when the hold ends."""
        with self.lock:
            if state.hold_key not in self.waiting:
                return  # the call left meanwhile
            state.queued = True
            self._need_beat(state.liveness_ms / 3000)
            self._timers.arm(state.hold_key, seconds_left)

    def _wake_first(self, hold_key: bytes) -> None:
        """The hold on ``hold_key`` ran out: wake the first local waiter, whose look hands it on."""
        with self.lock:
            local = self.waiting.get(hold_key)
            first = next(iter(local)) if local else None
        if first is not None:
            first.wake()

    def track(self, hold_key: bytes, lease: Lease, liveness_ms: int) -> Lease:
        """Put a process-bound hold under the heartbeat (or take a timed one off it)."""
        if lease.ttl is None:
            self.keep(hold_key, str(lease.token).encode(), liveness_ms, lease.holder)
        else:
            self.drop(hold_key)
        return lease

    def start(self) -> float:
        """Start the listener if needed; how long a caller may wait for its subscription
        (``ready``) before a waiter is queued in Redis: a release published before the
        subscription would be lost."""
        with self.lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="txlock-redis-listener", daemon=True)
                self._thread.start()
        budget = call_budget()  # an acquire with a timeout waits no longer than that
        return SUBSCRIBE_WAIT if budget is None else min(SUBSCRIBE_WAIT, budget)

    async def until_ready(self, timeout: float) -> bool:
        """``ready.wait(timeout)`` for the event loop, parking no thread: the subscription is
        made by the listener thread; the task looks at it with a short backoff (only while a
        first subscription or a reconnection is under way)."""
        give_up = time.monotonic() + timeout
        delay = 0.0005
        while not self.ready.is_set():
            left = give_up - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return True

    def not_ready(self, timeout: float) -> BackendUnavailable:
        error = self._error
        detail = f" ({translate(error, self.where, self._secrets)})" if error is not None else ""
        return BackendUnavailable(
            f"could not subscribe to wake-ups on Redis at {self.where} within {timeout:g}s{detail}"
        )

    def _listen(self) -> None:
        pubsub: Any = None
        delay = 0.05
        idle_since: float | None = None
        try:
            while True:
                with self.lock:
                    if self.waiters.total():
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > LISTENER_IDLE:
                        self.ready.clear()
                        self._thread = None
                        return
                try:
                    if pubsub is None:
                        pubsub = self.client().pubsub()
                        pubsub.subscribe(self.channel)
                    # The raw reply: get_message()'s dict building is a measurable part
                    # of the hand-off latency.
                    message = pubsub.parse_response(block=False, timeout=0.5)
                except DRIVER_ERRORS as exc:
                    self.ready.clear()
                    # Warn once per outage; the retries that follow are debug noise.
                    level = logging.WARNING if self._error is None else logging.DEBUG
                    self._error = exc
                    if pubsub is not None:
                        with contextlib.suppress(Exception):
                            pubsub.close()
                        pubsub = None
                    log.log(level, "wake-up listener lost Redis at %s (%s); reconnecting", self.where,
                            translate(exc, self.where, self._secrets))
                    self.waiters.wake_all()
                    time.sleep(delay)  # back off before reconnecting (not ordering events)
                    delay = min(delay * 2, 1.0)
                    continue
                if not message:
                    continue
                if message[0] == b"message":
                    self._dispatch(message[2])
                elif message[0] == b"subscribe":
                    delay = 0.05
                    self._error = None
                    self.ready.set()
                    self.waiters.wake_all()  # wake-ups sent while we were away are lost: re-check
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _dispatch(self, data: bytes) -> None:
        parts = data.split(b" ")
        for waiter, state in self.waiters.entries(parts[1].decode()):
            if parts[0] == b"g" and state.holder is not None and not self.wait_replicas:
                # A release handed the lock to this waiter: its lease, with no round trip.
                # The lease is set before the waiter is forgotten: a reader that finds no
                # state (``Waiter.data``) finds the lease.
                lease = lease_of(state.key, state.holder, state.ttl, int(parts[2]), int(parts[3]), int(parts[4]))
                waiter.lease = self.track(state.hold_key, lease, state.liveness_ms)
                self.forget(waiter, state)
            waiter.wake()

    # -- the heartbeat of process-bound holds

    def keep(self, hold_key: bytes, token: bytes, liveness_ms: int, holder: str) -> None:
        """Renew this hold with the others until it is dropped or found lost."""
        with self.lock:
            self.holds[hold_key] = (token, liveness_ms)
            self.holders[hold_key] = holder
            self._renewed[hold_key] = time.monotonic()
            self._need_beat(liveness_ms / 3000)

    def _need_beat(self, interval: float) -> None:
        """Run the heartbeat at least every ``interval`` seconds (under ``lock``)."""
        if self._job is None or interval < self._interval:
            if self._job is not None:
                self._job.cancel()
            self._interval = interval
            self._job = _scheduler.schedule(self._beat, interval, name=f"txlock heartbeat {self.where}")

    def drop(self, hold_key: bytes, token: bytes | None = None, holder: str | None = None) -> None:
        """Stop renewing this hold (only if its grant is ``token`` and its holder ``holder``,
        when given)."""
        with self.lock:
            held = self.holds.get(hold_key)
            if held is None or (token is not None and held[0] != token):
                return
            if holder is not None and self.holders.get(hold_key) != holder:
                return
            del self.holds[hold_key]
            self.holders.pop(hold_key, None)
            self._renewed.pop(hold_key, None)

    def _beat(self) -> bool:
        with self.lock:
            if not self.holds and not self.waiting:
                self._job = None
                self._interval = math.inf
                return False
            items = list(self.holds.items())
            units = self._waiting_units()
        sent = time.monotonic()
        groups: dict[int, tuple[list[Held], list[Unit]]] = {}
        if self.cluster:
            for item in items:
                groups.setdefault(key_slot(item[0]), ([], []))[0].append(item)
            for unit in units:
                groups.setdefault(key_slot(unit[0]), ([], []))[1].append(unit)
        else:
            for start in range(0, len(items), HEARTBEAT_BATCH):
                groups[start] = (items[start : start + HEARTBEAT_BATCH], [])
            for start in range(0, len(units), HEARTBEAT_BATCH):
                groups.setdefault(start, ([], []))[1].extend(units[start : start + HEARTBEAT_BATCH])
        renewed = [self._renew(held, waiting) for held, waiting in groups.values()]
        if all(renewed):
            with self.lock:
                self.last_beat = max(self.last_beat, sent)
        return True

    def _waiting_units(self) -> list[Unit]:
        """What the heartbeat keeps alive for the waiting calls, per key (under ``lock``):
        (hold key, liveness ms, ids of queued acquirers, ids of registered watchers), split
        so that no unit names more than :data:`WAITERS_PER_UNIT` calls."""
        units: list[Unit] = []
        for hold_key, local in self.waiting.items():
            liveness_ms = max(state.liveness_ms for state in local.values())
            acquirers = [state.waiter_id for state in local.values() if state.queued and state.holder is not None]
            watchers = [state.waiter_id for state in local.values() if state.queued and state.holder is None]
            for start in range(0, max(len(acquirers), len(watchers)), WAITERS_PER_UNIT):
                end = start + WAITERS_PER_UNIT
                units.append((hold_key, liveness_ms, acquirers[start:end], watchers[start:end]))
        return units

    def _renew_confirmed(self, client: Any, keys: list[bytes], args: list[Any]) -> Any:
        """The heartbeat script, then ``WAIT`` on the same connection; its reply, or
        :class:`Unconfirmed` when too few replicas have the renewal."""
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("EVAL", HEARTBEAT.source, len(keys), *keys, *args)
        pipe.execute_command("WAIT", self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
        replies, acked = pipe.execute()
        if int(acked) < self.wait_replicas:
            raise Unconfirmed(
                f"{acked} of {self.wait_replicas} replica(s) confirmed the renewal within {self.wait_timeout:g}s"
            )
        return replies

    def _renew(self, group: list[Held], units: list[Unit]) -> bool:
        """Renew one group of holds, and keep the waiting calls of ``units`` queued, in one
        script call; ``False`` if the call failed."""
        keys = [hold_key for hold_key, _ in group]
        args: list[Any] = [len(group), *(value for _, held in group for value in held)]
        for hold_key, liveness_ms, acquirers, watchers in units:
            base = hold_key[:-1]
            keys += [hold_key, base + b"q", base + b"w", base + b"v"]
            args += [liveness_ms, self.channel, len(acquirers), *acquirers, len(watchers), *watchers]
        started = time.monotonic()
        wake: list[bytes] = []
        try:
            client = self.client()
            if self.wait_replicas:
                replies = self._renew_confirmed(client, keys, args)
            else:
                try:
                    replies = client.evalsha(HEARTBEAT.sha, len(keys), *keys, *args)
                except NoScriptError:
                    replies = client.eval(HEARTBEAT.source, len(keys), *keys, *args)
            lost = [group[int(index) - 1] for index in replies[0]]
            wake = replies[1]
        except DRIVER_ERRORS as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(level, "heartbeat could not renew %d hold(s) and %d waiting key(s) on Redis at %s: %s",
                    len(group), len(units), self.where, translate(exc, self.where, self._secrets))
            # A hold not renewed for a whole liveness window has expired on the server: stop trying.
            with self.lock:
                lost = [(hold_key, held) for hold_key, held in group
                        if started - self._renewed.get(hold_key, started) > held[1] / 1000]
        else:
            if self._failing:
                self._failing = False
                log.warning("heartbeat reached Redis at %s again", self.where)
            with self.lock:
                for hold_key in keys[: len(group)]:
                    if hold_key in self._renewed:
                        self._renewed[hold_key] = started
        for hold_key, (token, _) in lost:
            log.info("process-bound hold %r is lost (expired, released or force-released)", hold_key)
            self.drop(hold_key, token)
        # Calls whose queue entry is gone (handed the lock, or dropped while this process was
        # silent), and calls that should look now (their key is free): they look again.
        for waiter_id in wake:
            for waiter, _ in self.waiters.entries(waiter_id.decode()):
                waiter.wake()
        return not self._failing


#: A process-bound hold the heartbeat renews: (hold key, (token, liveness ms)).
Held: TypeAlias = tuple[bytes, tuple[bytes, int]]
#: What the heartbeat keeps alive for one waiting key: (hold key, liveness ms, ids of the
#: queued acquirers, ids of the registered watchers).
Unit: TypeAlias = tuple[bytes, int, list[str], list[str]]


class Unconfirmed(RedisError):
    """A heartbeat that fewer than ``wait_replicas`` replicas confirmed (handled as a failed one)."""


#: This process's hubs, by server (a URL, or the identity of a caller-supplied client). A
#: child made by ``fork`` forgets them: it has no listener thread, no waiters, and must
#: never renew its parent's holds.
hubs: PerProcess[tuple[Any, ...], Hub] = PerProcess()
