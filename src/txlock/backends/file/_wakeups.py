"""Waking the waiters of one process and directory: inotify watches, rings, deaths.

A waiter registers on the *channels* it waits for: the record file name of its key, and
``life/<id>`` of the process holding it. Three things wake it:

* a release in this process (``wake_next`` of the key's name: the oldest acquirer, and
  every call that only waits for the key to be free);
* a *ring* from another process: a release there touched this process's life file
  (``IN_ATTRIB``), which wakes the next waiter of every key this process waits for here;
* the death of a holder: the kernel closes its life file (``IN_CLOSE_WRITE``), and once
  its ``flock`` is gone the waiters watching it, and the next waiter of every key, wake.

Without inotify (not Linux, none left), waiters poll with a short exponential backoff.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import suppress

from txlock import _inotify, _scheduler
from txlock._liveness import LifeFiles
from txlock._waiter import Waiter
from txlock._waitlist import WaiterTable

__all__ = ["LIFE_DIR", "POLL_FIRST", "POLL_MAX", "SAFETY_NET", "Registration", "Wakeups", "life_channel"]

log = logging.getLogger("txlock.file")

#: The longest a waiter sleeps without a wake-up while inotify watches the directory.
SAFETY_NET = 0.25
#: The fallback poll (no inotify): first and longest interval of the backoff.
POLL_FIRST, POLL_MAX = 0.001, 0.05
#: True: this process's waiters never use inotify and poll instead (the tests set it; the
#: shared watcher itself reports an unavailable inotify as ``None``).
inotify_disabled = False
#: After a life file's close event: how often, and how many times, to look whether the
#: kernel has dropped the dead process's flock (it does just after the close) before
#: waking the waiters anyway.
LIFE_PROBE_EVERY = 0.00025
LIFE_PROBES = 40
#: The directory of the life files, inside the lock directory.
LIFE_DIR = "life"


def life_channel(life: bytes) -> str:
    """The channel of the waiters watching process ``life`` (its life file's path)."""
    return f"{LIFE_DIR}/{life.hex()}"


class Registration:
    """What a waiter registered (kept in ``Waiter.data``; its entry on every channel)."""

    __slots__ = ("acquirer", "backoff", "channels", "fails", "ident", "quiet", "reserved", "since")

    def __init__(self, since: float, acquirer: bool) -> None:
        self.since = since
        self.acquirer = acquirer  # False: waits for the key to be free without taking it
        self.ident = os.urandom(8)  # its reservation id
        self.channels: set[str] = set()
        self.reserved = False
        self.backoff = POLL_FIRST
        self.fails = 0  # attempts that found the key held
        self.quiet = 0.0  # the current interval without rings


def _acquires(entry: Registration) -> bool:
    return entry.acquirer


class Wakeups:
    """The local waiters of one directory, and the inotify watches that wake them."""

    def __init__(self, path: str, fd: int, lives: LifeFiles[bytes]) -> None:
        self.path = path
        self.fd = fd
        self.lives = lives
        self.mutex = threading.Lock()
        self.waiters: WaiterTable[str, Registration] = WaiterTable()
        self.watcher: _inotify.Inotify | None = None  # the one that holds ``watches``
        self.watches: list[int] = []
        self.watching: bool | None = None  # None: not tried yet
        self.seen: set[str] = set()  # channels handled in the watcher's current read
        self.seen_batch = -1

    # ------------------------------------------------------------ registration

    def register(self, channel: str, waiter: Waiter, acquirer: bool = True) -> Registration:
        entry = waiter.data
        if entry is None:
            entry = waiter.data = Registration(time.time(), acquirer)
        assert isinstance(entry, Registration)
        if channel not in entry.channels:
            entry.channels.add(channel)
            self.waiters.add(channel, waiter, entry)
            if self.watching is None:
                self.start_watching()
        return entry

    def unregister(self, waiter: Waiter) -> Registration | None:
        entry = waiter.data
        waiter.data = None
        if not isinstance(entry, Registration):
            return None
        for channel in entry.channels:
            self.waiters.discard(channel, waiter)
        return entry

    def parked(self, channel: str) -> int:
        return self.waiters.count(channel)

    def longest_sleep(self, entry: Registration | None) -> float:
        """The longest a waiter may sleep without a wake-up."""
        if self.watching:
            return SAFETY_NET
        if entry is None:
            return POLL_FIRST
        interval = entry.backoff
        entry.backoff = min(POLL_MAX, interval * 2)
        return interval

    # ------------------------------------------------------------ waking

    def wake_next(self, channel: str) -> None:
        """``channel`` was freed: wake the local waiter that registered first to acquire it
        (it tries at once; the others wait for its release, or its withdrawal) and every
        local waiter that only waits for the key to be free."""
        self.waiters.wake_first(channel, _acquires)

    def rung(self) -> None:
        """A release rang this process, for a key it does not name: wake the next waiter
        of every key this process waits for here (usually one)."""
        waiters = self.waiters
        with waiters.mutex:
            channels = [channel for channel in waiters.channels if not channel.startswith(LIFE_DIR)]
        for channel in channels:
            waiters.wake_first(channel, _acquires)

    def life_closed(self, channel: str) -> None:
        """The owner of a life file closed it: it is dying. Wait (briefly) until the kernel
        drops its flock, which happens just after the close event, then wake the waiters
        watching it, and the next waiter of every key: one that has slept since the dead
        process took its key (a quiet interval, a grace) has not learned its life yet."""
        if not self.waiters.channels:
            return
        life = bytes.fromhex(channel[len(LIFE_DIR) + 1 :])
        tries = iter(range(LIFE_PROBES))

        def probe() -> bool:
            # On the scheduler thread, one flock probe per run: the inotify thread, which
            # serves every wake-up of the process, never sleeps here.
            if next(tries, None) is not None and self.lives.alive(life):
                return True  # look again in LIFE_PROBE_EVERY
            self.waiters.wake(channel)
            self.rung()
            return False

        _scheduler.schedule(probe, LIFE_PROBE_EVERY, name="txlock life check", first_delay=0)

    # ------------------------------------------------------------ inotify

    def start_watching(self) -> None:
        with self.mutex:
            if self.watching is not None:
                return
            self.watching = False
        inotify = None if inotify_disabled else _inotify.get()
        if inotify is None:
            return
        proc = os.path.isdir("/proc/self/fd")
        try:
            self.lives.own_id()
            life_dir = self.lives.dir_fd
            self.watcher = inotify
            self.watches.append(
                inotify.watch(f"/proc/self/fd/{self.fd}" if proc else self.path, _inotify.IN_DELETE, self.on_event)
            )
            mask = _inotify.IN_CLOSE_WRITE | _inotify.IN_DELETE | _inotify.IN_ATTRIB  # deaths, burials, rings
            self.watches.append(
                inotify.watch(
                    f"/proc/self/fd/{life_dir}" if proc else self.lives.path,
                    mask,
                    self.on_life_event,
                )
            )
        except OSError as exc:
            log.debug("cannot watch %s with inotify (%s); waiters poll", self.path, exc)
            return
        self.watching = True

    def on_event(self, mask: int, name: bytes) -> None:
        """An inotify event of the directory (on the watcher's thread): a record removed."""
        self.dispatch(mask, name.decode("ascii", "replace"), False)

    def on_life_event(self, mask: int, name: bytes) -> None:
        """An inotify event of ``life/`` (on the watcher's thread): a death, a burial, a ring."""
        self.dispatch(mask, f"{LIFE_DIR}/{name.decode('ascii', 'replace')}", True)

    def dispatch(self, mask: int, channel: str, life: bool) -> None:
        """Wake the waiters an event concerns; a channel is handled once per read (batch)."""
        if mask & _inotify.IN_Q_OVERFLOW:  # events were lost
            self.waiters.wake_all()
            return
        if mask & _inotify.IN_IGNORED:  # the directory went away
            self.watching = False
            self.waiters.wake_all()
            return
        watcher = self.watcher
        if watcher is not None and watcher.batch != self.seen_batch:
            self.seen_batch = watcher.batch
            self.seen.clear()
        if channel in self.seen:  # once per channel and read of the descriptor
            return
        self.seen.add(channel)
        if life:
            if mask & _inotify.IN_CLOSE_WRITE:
                self.life_closed(channel)
            elif mask & _inotify.IN_ATTRIB:
                # A ring (see ring_and_write): ours, or another process's (ignored). Not a
                # watch on our own life file: an inotify mark on it delays, at exit, the
                # release of its flock by milliseconds, and so the recovery of our holds.
                own = self.lives.own
                if own is not None and channel == life_channel(own):
                    self.rung()
                else:
                    self.seen.discard(channel)  # rings are not deduplicated per read
            else:
                self.waiters.wake(channel)
        else:
            self.waiters.wake(channel)  # removed

    # ------------------------------------------------------------ life cycle

    def stop(self) -> None:
        """The directory is let go of: unwatch it, and wake every waiter (to look again)."""
        inotify = self.watcher
        if inotify is not None:
            for watch in self.watches:
                with suppress(OSError):
                    inotify.unwatch(watch)
        self.watches.clear()
        self.waiters.wake_all()

    def after_fork(self) -> None:
        """In a forked child: the parent's waiters and watches are not ours."""
        self.mutex = threading.Lock()
        self.waiters.reset_after_fork()
        self.watcher = None  # the parent's: txlock._inotify makes the child its own
        self.watches = []
        self.watching = None
