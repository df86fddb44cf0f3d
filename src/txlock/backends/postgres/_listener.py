"""The one LISTEN connection of this process to one database, and the waiters it wakes.

A waiting call costs the server nothing while it sleeps: a release notifies it (or hands it
the lock), the process's one heartbeat keeps its queue ticket alive, and a hold that ends
without a release (its ``hold_timeout`` passed, or its process died) is noticed by one timer
per waiting key (:meth:`Listener.arm`), which wakes one local waiter to look again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import select
import threading
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from txlock._types import Lease
from txlock._waiter import Waiter
from txlock._waitlist import HoldTimers, WaiterTable
from txlock.backends.postgres._config import scrub

if TYPE_CHECKING:
    from txlock.backends.postgres._store import HeldKeys

__all__ = ["BACKEND_PID", "POLL_INTERVAL", "Listener", "Registration"]

log = logging.getLogger("txlock.postgres")

#: Sleep between attempts when LISTEN cannot be used (transaction pooler, listener down).
POLL_INTERVAL = 0.05
#: Asked once per connection: a proxy announces a backend pid that differs from the real one.
BACKEND_PID = "SELECT pg_backend_pid()"
class Registration:
    """What a waiter of this backend carries in ``Waiter.data`` (and the listener's table)."""

    __slots__ = ("acquire", "call", "channel", "digest", "held", "key_tag", "queued", "ticket", "waiter_id")

    def __init__(self, channel: str, key_tag: str, acquire: bool) -> None:
        self.channel = channel
        self.key_tag = key_tag  # how notifications name the key: the start of its hash, in hex
        self.acquire = acquire
        self.waiter_id = uuid.uuid4() if acquire else None
        self.ticket: int | None = None
        self.queued = False  # a queue row may exist
        # (key, holder, hold_timeout) of a queued acquire: what its lease is made of when
        # a release hands it the lock.
        self.call: tuple[str, str, float | None] | None = None
        #: The store's set of held key hashes (``Store.held``) and this key's hash, to record
        #: a hold without hold_timeout handed to this call.
        self.held: HeldKeys | None = None
        self.digest: bytes | None = None

    def lease(self, token: int, expires: float) -> Lease:
        """The lease of this call once handed the lock (its process's heartbeat already
        runs: the call registered as a waiter)."""
        assert self.call is not None
        key, holder, ttl = self.call
        if ttl is None and self.held is not None and self.digest is not None:
            self.held.add(self.digest, holder)
        return Lease(key, holder, token, None if ttl is None else expires, ttl)


class Listener:
    """The one LISTEN connection of this process to one database, on its own thread.

    Waiters register here (by channel and key) *before* they look at the table, so a release
    that commits after their look always reaches them. The thread wakes the registered
    waiters (thread or event-loop waiters alike) when a notification names their key, and
    wakes every waiter whenever notifications may have been missed (the connection was
    lost, or LISTEN turned out not to work).
    """

    def __init__(self, conninfo: dict[str, str], display: str) -> None:
        self.conninfo = conninfo
        self.connect_args: dict[str, Any] = {"connect_timeout": "10", **conninfo, "autocommit": True}
        self.display = display
        self.mutex = threading.Lock()
        self.waiters: WaiterTable[tuple[str, str], Registration] = WaiterTable()
        #: Per waiting (channel, key tag): the timer that wakes its waiters when the hold
        #: (or the ticket ahead) last seen runs out (under ``mutex``).
        self.timers: HoldTimers[tuple[str, str]] = HoldTimers(
            self.mutex, "txlock postgres hold end", lambda where: self.waiters.count(where) > 0,
            lambda where: self._dispatch(*where),
        )
        self.users: dict[str, int] = {}  # channel -> number of stores using it
        self.subscriptions: dict[str, concurrent.futures.Future[bool]] = {}
        self.listening: set[str] = set()
        self.working = False  # notifications reach this process right now
        # A session advisory lock held by the LISTEN connection: queue tickets naming it
        # count only while this process (its listening session) is alive.
        self.session_key = int.from_bytes(os.urandom(8), "big", signed=True)
        self.session_locked = False
        self.pooled = False  # LISTEN does not work here (transaction pooler): poll for good
        self.thread: threading.Thread | None = None
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)

    # -- called by stores and waiters (any thread)

    def retain(self, channel: str) -> None:
        with self.mutex:
            self.users[channel] = self.users.get(channel, 0) + 1

    def release(self, channel: str) -> None:
        with self.mutex:
            left = self.users.get(channel, 0) - 1
            if left > 0:
                self.users[channel] = left
                return
            self.users.pop(channel, None)
            self.subscriptions.pop(channel, None)
        self._interrupt()

    def subscribe(self, channel: str) -> concurrent.futures.Future[bool]:
        """A future done once LISTEN on ``channel`` is active (``True``) or unusable (``False``)."""
        with self.mutex:
            future = self.subscriptions.get(channel)
            if future is None:
                future = self.subscriptions[channel] = concurrent.futures.Future()
                if self.pooled:
                    future.set_result(False)
                    return future
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="txlock-postgres-listen", daemon=True)
                self.thread.start()
        self._interrupt()
        return future

    def add(self, registration: Registration, waiter: Waiter) -> None:
        self.waiters.add((registration.channel, registration.key_tag), waiter, registration)

    def remove(self, registration: Registration, waiter: Waiter) -> None:
        self.waiters.discard((registration.channel, registration.key_tag), waiter)

    def mark_pooled(self) -> None:
        """LISTEN cannot work here (a transaction-pooling proxy): waiters poll from now on."""
        with self.mutex:
            self.pooled = True
            self.working = False
            futures = list(self.subscriptions.values())
        for future in futures:
            if not future.done():
                future.set_result(False)
        self._interrupt()

    def session(self) -> int | None:
        """The session lock key to store with queue tickets, or ``None`` (liveness window only)."""
        return self.session_key if self.working and self.session_locked and not self.pooled else None

    def live(self, channel: str) -> list[uuid.UUID]:
        """Ids of the calls of this process queued on ``channel`` right now."""
        with self.waiters.mutex:
            return [
                registration.waiter_id
                for (each, _), waiters in self.waiters.channels.items()
                if each == channel
                for registration in waiters.values()
                if registration.queued and registration.waiter_id is not None
            ]

    def count(self) -> int:
        return self.waiters.total()

    def arm(self, channel: str, key_tag: str, seconds: float) -> None:
        """A waiter's look found the key taken for ``seconds`` more (a hold, or a ticket
        ahead of it, as far as the server knows now): look again then (waking the oldest
        local queued acquirer and every watcher, as a "free" notification would), unless a
        release or a later look says otherwise. One timer per key, however many calls wait."""
        with self.mutex:
            self.timers.arm((channel, key_tag), seconds)

    def alone(self, channel: str, key_tag: str, waiter: Waiter) -> bool:
        """Whether ``waiter`` is the only call of this process registered on the key."""
        return self.waiters.alone((channel, key_tag), waiter)

    def count_key(self, channel: str, key_tag: str) -> int:
        return self.waiters.count((channel, key_tag))

    def _interrupt(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_write, b"x")

    def _dispatch(self, channel: str, payload: str) -> None:
        key_tag, _, grant = payload.partition(" ")
        if grant:
            self._granted(channel, key_tag, grant)
            return
        # The key is free: wake every watcher and un-ticketed waiter, but of the queued
        # acquirers only the oldest local one (by ticket, not by local arrival): the others
        # cannot be admitted before it anyway (no herd).
        first: Waiter | None = None
        first_ticket = 0
        for waiter, registration in self.waiters.entries((channel, key_tag)):
            ticket = registration.ticket if registration.acquire else None
            if ticket is None:
                waiter.wake()
            elif first is None or ticket < first_ticket:
                first, first_ticket = waiter, ticket
        if first is not None:
            first.wake()

    def _granted(self, channel: str, key_tag: str, grant: str) -> None:
        """A release handed the lock to a queued call: if it is one of ours and still
        waiting, give it the lease (it returns without asking the table again)."""
        try:
            waiter_text, token_text, expires_text = grant.split(" ")
            waiter_id, token, expires = uuid.UUID(waiter_text), int(token_text), float(expires_text)
        except ValueError:
            log.warning("txlock ignored a malformed notification on %s: %r", channel, grant)
            return
        table = self.waiters
        granted: Waiter | None = None
        with table.mutex:
            waiters = table.channels.get((channel, key_tag), {})
            for waiter, registration in waiters.items():
                if registration.waiter_id == waiter_id and registration.call is not None:
                    # Under the table's mutex, so that a call giving up at this moment either
                    # finds its lease here or finds itself unregistered and asks the table.
                    del waiters[waiter]
                    if not waiters:
                        del table.channels[(channel, key_tag)]
                    registration.queued = False  # the releasing statement deleted the ticket
                    waiter.data = None
                    waiter.lease = registration.lease(token, expires)
                    granted = waiter
                    break
            others = bool(waiters)
        length = expires - token / 1e6
        if others and math.isfinite(length):
            # The queue moved on: a ticket was served, and the hold it got may end without
            # a release (its hold_timeout, its process's death), which nothing announces.
            # The key's other waiters here slept on the old hold or on the tickets ahead;
            # the key's timer wakes the oldest of them when the new hold would end (its
            # length is its expiry less its token, the server's clock in microseconds at
            # the grant), so a hold that runs out is noticed (else a lost wake-up, until a
            # waiter's own deadline; found by the clock lab).
            with self.mutex:
                self.timers.arm((channel, key_tag), max(0.0, length))
        if granted is not None:
            granted.wake()

    def _resolve(self, value: bool, only: set[str] | None = None) -> None:
        with self.mutex:
            futures = [future for channel, future in self.subscriptions.items() if only is None or channel in only]
        for future in futures:
            if not future.done():
                future.set_result(value)

    # -- the thread

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        backoff = 0.1
        try:
            while True:
                with self.mutex:
                    wanted = set(self.users) & set(self.subscriptions)
                    if not wanted or self.pooled:
                        # Exit under the mutex: a later subscribe() starts a new thread.
                        self.thread = None
                        self.working = False
                        return
                if conn is None:
                    try:
                        conn = psycopg.Connection.connect(**self.connect_args)
                    except psycopg.Error as exc:
                        self.working = False
                        self._resolve(False)
                        log.warning(
                            "txlock could not open its LISTEN connection to %s (%s); waiters poll every"
                            " %gs until it is back",
                            self.display,
                            self._scrub(exc),
                            POLL_INTERVAL,
                        )
                        self._pause(backoff)
                        backoff = min(backoff * 2, 2.0)
                        continue
                    self.listening = set()
                try:
                    self._serve(conn, wanted)
                    backoff = 0.1
                except psycopg.Error as exc:
                    was_working, self.working, self.session_locked = self.working, False, False
                    log.warning(
                        "txlock's LISTEN connection to %s was lost (%s); reconnecting, waiters re-check meanwhile",
                        self.display,
                        self._scrub(exc),
                    )
                    conn.close()
                    conn = None
                    if was_working:
                        self.waiters.wake_all()
                    self._pause(backoff)
        finally:
            if conn is not None:
                conn.close()

    def _scrub(self, exc: BaseException) -> str:
        return scrub(str(exc).strip(), self.conninfo)

    def _pause(self, seconds: float) -> None:
        select.select([self.wake_read], [], [], seconds)
        self._drain()

    def _drain(self) -> None:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _serve(self, conn: psycopg.Connection[Any], wanted: set[str]) -> None:
        fresh = not self.listening
        for channel in sorted(wanted - self.listening):
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.listening.add(channel)
        for channel in sorted(self.listening - wanted):
            conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
            self.listening.discard(channel)
        if fresh and self.listening and not self._direct(conn):
            self.pooled = True
            self.working = False
            log.warning(
                "LISTEN on %s cannot reach txlock's connection through a transaction-pooling proxy"
                " (pgbouncer?); waiters poll every %gs instead of being woken",
                self.display,
                POLL_INTERVAL,
            )
            try:
                conn.execute("UNLISTEN *")
            finally:
                self._resolve(False)
                self.waiters.wake_all()
            return
        if fresh:
            self.working = True
            self.waiters.wake_all()  # anything released while we were away
        self._resolve(True, self.listening)
        for note in conn.notifies(timeout=0):
            self._dispatch(note.channel, note.payload)
        readable, _, _ = select.select([conn.fileno(), self.wake_read], [], [], 60)
        if self.wake_read in readable:
            self._drain()
        for note in conn.notifies(timeout=0):
            self._dispatch(note.channel, note.payload)

    def _direct(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether ``conn`` is a session of the server itself (not a proxy's: a proxy announces
        a backend pid of its own); if so, take this process's session lock on it."""
        row = conn.execute(BACKEND_PID, prepare=False).fetchone()
        if not row or row[0] != conn.info.backend_pid:
            return False
        conn.execute("SELECT pg_advisory_lock(%s)", (self.session_key,), prepare=False)
        self.session_locked = True
        return True
