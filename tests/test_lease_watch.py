"""A ``lock()`` block with a ttl knows until when its hold is surely valid, and reports the
loss before then when renewals stop getting through, even while a renewal hangs.

The store cannot end a hold before the moment the granting (or last renewing) request was
sent plus the ttl; ``LockContext.valid_until`` is that moment on this process's monotonic
clock, and the lease watch (a thread that does no I/O) declares the hold lost
``loss_margin(ttl)`` before it unless a renewal moved it on.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

import txlock
from _support import eventually
from txlock._context import loss_margin


def test_valid_until_starts_at_the_grant_and_moves_with_each_renewal() -> None:
    m = txlock.from_url(f"memory://watch-{uuid.uuid4().hex}")
    before = time.monotonic()
    with m.lock("k", ttl=0.3) as held:
        first = held.valid_until
        assert first is not None
        assert before + 0.3 <= first <= time.monotonic() + 0.3
        eventually(lambda: (held.valid_until or 0) > first, 5, "a renewal moves valid_until on")
        assert not held.lost
    assert held.valid_until is None  # outside the block


def test_a_hold_without_ttl_has_no_validity_deadline() -> None:
    m = txlock.from_url(f"memory://watch-{uuid.uuid4().hex}")
    with m.lock("k") as held:
        assert held.valid_until is None


def test_an_acquire_that_waited_longer_than_a_third_of_the_ttl_is_renewed_before_the_block(tmp_path: Path) -> None:
    """The grant of a long wait may have been made by the releaser (a direct hand-off) at any
    time since the call began: the block renews it first, so its validity counts from now."""
    m = txlock.from_url(f"memory://watch-{uuid.uuid4().hex}")
    assert m.acquire_lock("k", "first")
    entered: list[tuple[float, float | None]] = []

    def second() -> None:
        with m.lock("k", "second", timeout=10, ttl=0.3) as held:
            entered.append((time.monotonic(), held.valid_until))

    thread = threading.Thread(target=second)
    thread.start()
    eventually(lambda: (info := m.inspect("k")) is not None and info.waiters == 1, 5, "the second block waits")
    threading.Event().wait(0.2)  # make the wait last longer than ttl / 3 (a duration, not an ordering)
    released = time.monotonic()
    m.release_lock("k", "first")
    thread.join(10)
    (at, valid_until), = entered
    assert valid_until is not None
    assert valid_until >= released + 0.3  # anchored after the release, not at the call's start
    assert valid_until <= at + 0.3


def test_the_loss_is_reported_before_the_lease_ends_when_the_renewal_hangs(tmp_path: Path) -> None:
    """Another connection keeps the SQLite database locked: the renewal waits for it, but
    only until the loss deadline, and the lease watch reports the loss on time meanwhile."""
    path = tmp_path / "locks.db"
    m = txlock.from_url(f"sqlite:///{path}?busy_timeout=30")
    reported = threading.Event()
    lost_at: list[float] = []

    def on_lost(lease: txlock.Lease) -> None:
        lost_at.append(time.monotonic())
        reported.set()

    ttl = 0.6
    with pytest.raises(txlock.LockLost), m.lock("k", ttl=ttl, on_lost=on_lost) as held:
        blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # every renewal from here on waits for it
        try:
            assert reported.wait(10)
            # The last renewal that went through fixed the validity; the watch reported
            # the loss at its deadline, a margin before that validity ends (and the store
            # could end the hold), not earlier.
            final = held.valid_until
            assert final is not None
            assert final - loss_margin(ttl) <= lost_at[0] < final
            assert held.lost
            with pytest.raises(txlock.LockLost):
                held.check()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    # The lost block did not release anything at its exit; the hold ends by its ttl.
    eventually(lambda: not m.is_locked("k"), 5, "the hold ends by its ttl")
    m.close()


def test_loss_margin_is_a_tenth_of_the_ttl_capped_at_a_second() -> None:
    assert loss_margin(0.5) == pytest.approx(0.05)
    assert loss_margin(3.0) == pytest.approx(0.3)
    assert loss_margin(600.0) == 1.0
