"""Value types shared by every backend: leases, lock descriptions, capabilities."""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["Busy", "Capabilities", "Lease", "LockInfo"]


class Lease(NamedTuple):
    """One grant of a lock.

    Attributes:
        key: the lock's key.
        holder: who holds it.
        token: the fencing token of this grant. Tokens are integers that strictly increase
            per key across all grants, so a resource that remembers the largest token it
            has seen can refuse a write carrying a smaller one (a holder whose hold ended
            while it was paused). Re-acquiring a lock you already hold keeps the token.
        expires_at: when the hold ends, in seconds since the epoch (``time.time()``), or
            ``None`` for a hold bound to the life of the acquiring process.
        ttl: the hold timeout this grant was made with, or ``None``.
    """

    key: str
    holder: str
    token: int
    expires_at: float | None = None
    ttl: float | None = None


class LockInfo(NamedTuple):
    """What ``inspect()`` and ``list_locks()`` report about a held lock.

    Attributes:
        key: the lock's key.
        holder: who holds it.
        token: the fencing token of the current grant.
        acquired_at: when the current grant was made (seconds since the epoch).
        expires_at: when the hold ends (seconds since the epoch), or ``None`` when it lasts
            as long as the process that took it.
        waiters: how many callers are queued for the lock, or ``None`` where the backend
            cannot know (waiters in other processes of a file or SQLite store).
    """

    key: str
    holder: str
    token: int
    acquired_at: float
    expires_at: float | None
    waiters: int | None = None


class Busy(NamedTuple):
    """The answer of a single acquire attempt that did not get the lock (internal).

    Attributes:
        holder: the current holder, if the backend knows it cheaply.
        retry_after: the longest a waiter should sleep before trying again even if no
            wake-up arrives (the time left on the current hold, or a safety-net interval);
            ``math.inf`` when a wake-up is guaranteed.
    """

    holder: str | None = None
    retry_after: float = math.inf


class Capabilities(NamedTuple):
    """What a backend can do; the conformance suite skips, with the reason, what it cannot.

    Attributes:
        processes: holds are shared by the processes of one host.
        hosts: holds are shared across hosts.
        fifo: waiters are served strictly in arrival order.
        injectable_clock: expiry can be driven by an injected clock in tests.
        counts_waiters: ``LockInfo.waiters`` is known.
        notes: free text shown in skip reasons and docs.
    """

    processes: bool = False
    hosts: bool = False
    fifo: bool = False
    injectable_clock: bool = False
    counts_waiters: bool = False
    notes: tuple[str, ...] = ()
