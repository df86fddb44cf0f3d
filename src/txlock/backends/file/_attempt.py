"""One attempt to acquire a key, in named steps, under its record file's exclusive flock.

The record read under the lock says which step applies:

* the same holder holds it: :func:`_grant_again` (token kept, expiry per this call);
* nobody holds it in force (free, expired, or its process dead): :func:`_take_free`
  grants it, unless an older waiter reserved the next grant (:func:`_may_take`); then the
  caller waits for that waiter (:func:`_wait_for_reserver`);
* another holder holds it: :func:`_wait_for_holder`, where a waiter asks the release to
  ring its process and, once it has waited long enough, reserves the next grant, so that
  no waiter starves (:func:`_note_waiter`).
"""

from __future__ import annotations

import time

from txlock._hostclock import host_now
from txlock._types import Busy, Lease
from txlock._validate import decode, encode
from txlock.backends.file._access import lease, load, lock_record
from txlock.backends.file._descriptors import process_id, write_all
from txlock.backends.file._directory import DirectoryState
from txlock.backends.file._record import GRACE, NO_LIFE, NO_RESERVATION, RESERVATION_STALE, Record, encode_record
from txlock.backends.file._wakeups import Registration

__all__ = ["QUIET_FIRST", "QUIET_MAX", "RESERVE_AFTER", "attempt", "served"]

#: A waiter that has waited this long reserves the next grant (if it is the oldest).
RESERVE_AFTER = 0.05
#: A waiter woken in vain (the key held again) is not rung for this long, doubling up to
#: QUIET_MAX; it looks again by itself at the end.
QUIET_FIRST, QUIET_MAX = 0.0005, 0.008
#: The shortest retry a ``Busy`` answer suggests.
_SHORTEST_RETRY = 0.0005

#: What an attempt answers: the lease, or ``Busy`` and the life id of the holder's process
#: when its hold is bound to it (so the waiter can watch that process's death).
Outcome = Lease | tuple[Busy, bytes | None]


def attempt(
    state: DirectoryState,
    directory: str,
    name: str,
    key: str,
    holder: str,
    ttl: float | None,
    entry: Registration | None,
) -> Outcome:
    """Try to acquire ``key`` (record file ``name``) for ``holder``; ``entry`` is the
    caller's waiter registration, if it waits."""
    locked = lock_record(state, directory, name, create=True)
    assert locked is not None
    fd, data = locked
    try:
        record, dirty = load(state, directory, data, name, encode(key))
        holder_bytes = encode(holder)
        now = time.time()
        live = state.live(record, now)
        if live and record.holder == holder_bytes:
            return _grant_again(state, fd, name, record, key, holder, ttl, now, entry)
        if not live:
            return _take_free(state, fd, name, record, dirty, key, holder, holder_bytes, ttl, now, entry)
        return _wait_for_holder(state, fd, name, record, now, entry)
    finally:
        state.checkin(name, fd)


def _grant_again(
    state: DirectoryState, fd: int, name: str, record: Record, key: str, holder: str, ttl: float | None, now: float,
    entry: Registration | None,
) -> Lease:
    """The same holder again: granted at once, token kept, expiry per this call."""
    record.bind(ttl, now, state.lives.own_id() if ttl is None else NO_LIFE, None if ttl is None else host_now())
    if entry is not None:
        served(state, name, record, entry)
    write_all(fd, encode_record(record))
    state.hold_bound(name, ttl)
    return lease(key, holder, record)


def _may_take(state: DirectoryState, record: Record, now: float, entry: Registration | None) -> tuple[bool, bool]:
    """``(may take, reserved)``: whether the caller may take the free key, and whether a
    reservation of another waiter stands (it is kept then)."""
    ours = entry is not None and record.reservation == entry.ident
    grace = record.in_grace(now)  # (then the reserver's life is not even checked)
    reserved = not ours and record.reservation != NO_RESERVATION and (grace or state.reserved(record, now))
    older = entry is not None and entry.since < record.reservation_since
    return not reserved or ours or grace or older, reserved


def _take_free(
    state: DirectoryState, fd: int, name: str, record: Record, dirty: bool, key: str, holder: str,
    holder_bytes: bytes, ttl: float | None, now: float, entry: Registration | None,
) -> Outcome:
    """Nobody holds the key in force: grant it (a new token), unless reserved for another."""
    may_take, reserved = _may_take(state, record, now, entry)
    if not may_take:
        return _wait_for_reserver(state, fd, name, record, dirty, now, entry)
    dead = record.life if record.held else NO_LIFE
    record.grant(
        holder_bytes, ttl, now, state.lives.own_id() if ttl is None else NO_LIFE, record.counter + 1, process_id(),
        None if ttl is None else host_now(),
    )
    if not reserved:
        record.unreserve()  # none, ours, or void
    if entry is not None:
        served(state, name, record, entry)
    write_all(fd, encode_record(record))
    state.hold_bound(name, ttl)
    if dead != NO_LIFE:
        state.lives.bury(dead)  # the dead process's life file, no longer needed
    return lease(key, holder, record)


def _wait_for_reserver(
    state: DirectoryState, fd: int, name: str, record: Record, dirty: bool, now: float, entry: Registration | None
) -> Outcome:
    """Free, but reserved by an older waiter: wait for its grant and release."""
    retry = max(min(record.reservation_seen + RESERVATION_STALE - now, state.wakeups.longest_sleep(entry)),
                _SHORTEST_RETRY)
    if entry is not None:
        entry.woken = False
        if record.add_bell(state.lives.own_id(), entry.since, now):
            dirty = True
        retry = state.wakeups.look_again(name, retry, entry)
    if dirty:
        write_all(fd, encode_record(record))
    return Busy(None, retry), None


def _wait_for_holder(
    state: DirectoryState, fd: int, name: str, record: Record, now: float, entry: Registration | None
) -> Outcome:
    """Held by another: wait, and have the release ring. A waiter's next look without a
    wake-up is asked of the key's timer (one per key and process), not of its own sleep."""
    retry = state.wakeups.longest_sleep(entry)
    if entry is not None:
        write, retry = _note_waiter(state, record, now, entry, retry)
        if write:
            write_all(fd, encode_record(record))
    if record.expires_at:
        retry = min(retry, max(record.ends_in(now, host_now()), _SHORTEST_RETRY))
    retry = max(retry, _SHORTEST_RETRY)
    if entry is not None:
        retry = state.wakeups.look_again(name, retry, entry)
    return Busy(decode(record.holder), retry), (None if record.expires_at else record.life)


def _note_waiter(
    state: DirectoryState, record: Record, now: float, entry: Registration, retry: float
) -> tuple[bool, float]:
    """Add this process's bell to ``record`` and, for a waiter that has waited long
    enough, reserve the next grant unless an older waiter holds the reservation (so no
    waiter starves). ``(whether the record changed, the retry)``."""
    # Woken by a release, and the key is held again: the holder's process re-acquired it.
    # Ask to be rung less often (backing off to QUIET_MAX), and look by then anyway: a holder
    # releasing many times in a row must not wake us every time. A look nothing woke (the
    # key's timer: the hold never ended) asks to be rung again at the next release, and
    # does not poll: only a vain wake-up starts a quiet interval.
    quiet = 0.0
    if entry.woken:
        entry.quiet = min(max(entry.quiet * 2, QUIET_FIRST), QUIET_MAX)
        quiet = now + entry.quiet
        retry = min(retry, entry.quiet)
        entry.woken = False
    own = state.lives.own_id()
    write = record.add_bell(own, entry.since, now, quiet)
    if record.reservation == entry.ident:
        if abs(now - record.reservation_seen) > RESERVATION_STALE / 4:
            record.reservation_seen, write = now, True
    elif now - entry.since >= RESERVE_AFTER and (
        entry.since < record.reservation_since or not state.reserved(record, now)
    ):
        record.reserve(entry.ident, entry.since, now, own)
        entry.reserved = write = True
    if record.reservation == entry.ident and record.in_grace(now):
        retry = min(retry, record.reservation_made + GRACE - now)  # releases ring no one until then
    return write, retry


def served(state: DirectoryState, name: str, record: Record, entry: Registration) -> None:
    """A waiter of this process was granted ``record``: its reservation and, if no other
    local waiter waits for the key, this process's bell are spent."""
    if record.reservation == entry.ident:
        record.unreserve()
    if record.bells and state.wakeups.parked(name) <= 1:
        record.drop_bell(state.lives.own_id())
