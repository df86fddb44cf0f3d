"""Waking the waiters of one process and directory: inotify watches, rings, deaths.

A waiter registers on the *channels* it waits for: the record file name of its key, and
``life/<id>`` of the process holding it. Three things wake it:

* a release in this process (``wake_next`` of the key's name: the oldest acquirer, and
  every call that only waits for the key to be free);
* a *ring* from another process: a release there touched this process's life file
  (``IN_ATTRIB``), which wakes the next waiter of every key this process waits for here;
* the death of a holder: the kernel closes its life file (``IN_CLOSE_WRITE``), and once
  its ``flock`` is gone the waiters watching it, and the next waiter of every key, wake.

Nothing else wakes a waiter: no waiter looks again on a timer of its own. What needs a look
without a signal (a hold that runs out, the safety net, a quiet interval's end, a
reservation's grace) is asked of the key's *timer*: one per key and process
(:class:`~txlock._waitlist.HoldTimers`), which wakes the key's first acquirer and first
watcher only. So the cost of waiting is per key and process, whatever the number of
waiters. Without inotify (not Linux, none left), that timer polls with a short exponential
backoff.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import suppress

from txlock import _inotify, _scheduler
from txlock._liveness import LifeFiles
from txlock._observe import lazy_logger
from txlock._waiter import Waiter
from txlock._waitlist import HoldTimers, WaiterTable, first_acquirer_and_watchers

__all__ = [
    "LIFE_DIR", "POLL_FIRST", "POLL_MAX", "SAFETY_NET", "WAITER_SLEEP", "Registration", "Wakeups", "life_channel",
]

log = lazy_logger("txlock.file")  # logging is imported when first used

#: The longest a key's first waiter sleeps without a wake-up while inotify watches the
#: directory (the key's timer wakes it; see :meth:`Wakeups.look_again`).
SAFETY_NET = 0.25
#: The longest any single waiter sleeps by itself: a last resort only, the key's timer (one
#: per key and process) is what wakes a waiter that must look again without a signal.
WAITER_SLEEP = 60.0
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

    __slots__ = ("acquirer", "backoff", "channels", "ident", "quiet", "reserved", "since", "woken")

    def __init__(self, since: float, acquirer: bool) -> None:
        self.since = since
        self.acquirer = acquirer  # False: waits for the key to be free without taking it
        self.ident = os.urandom(8)  # its reservation id
        self.channels: set[str] = set()
        self.reserved = False
        self.backoff = POLL_FIRST
        self.woken = False  # woken by a release (here, or a ring) since its last look
        self.quiet = 0.0  # the current interval without rings


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
        self.watchers: dict[str, int] = {}  # per channel: its waiters that do not acquire
        self.timer_mutex = threading.Lock()
        self.timers = self._timers()

    def _timers(self) -> HoldTimers[str]:
        return HoldTimers(self.timer_mutex, "txlock file look again", lambda channel: channel in self.waiters.channels,
                          self.wake_timed)

    # ------------------------------------------------------------ registration

    def register(self, channel: str, waiter: Waiter, acquirer: bool = True) -> Registration:
        entry = waiter.data
        if entry is None:
            entry = waiter.data = Registration(time.time(), acquirer)
        assert isinstance(entry, Registration)
        if channel not in entry.channels:
            entry.channels.add(channel)
            with self.waiters.mutex:
                if not entry.acquirer:
                    self.watchers[channel] = self.watchers.get(channel, 0) + 1
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
            if self.waiters.discard(channel, waiter) is not None and not entry.acquirer:
                with self.waiters.mutex:
                    left = self.watchers.pop(channel, 1) - 1
                    if left:
                        self.watchers[channel] = left
            if channel not in self.waiters.channels:
                with self.timer_mutex:
                    if channel not in self.waiters.channels:
                        self.timers.cancel(channel)
        return entry

    def parked(self, channel: str) -> int:
        return self.waiters.count(channel)

    def longest_sleep(self, entry: Registration | None) -> float:
        """The longest a key's first waiter may go without a look (a poll, without inotify)."""
        if self.watching:
            return SAFETY_NET
        if entry is None:
            return POLL_FIRST
        interval = entry.backoff
        entry.backoff = min(POLL_MAX, interval * 2)
        return interval

    def look_again(self, channel: str, seconds: float, entry: Registration) -> float:
        """A waiter's look found the key of ``channel`` taken and wants a look again within
        ``seconds`` if nothing wakes a waiter first; what it sleeps by itself. The key's
        first local waiter (the one its timer would wake) keeps that time itself: its own
        timed sleep *is* the key's one timer, with no hand-off to the lease-watch thread
        (on the path from a hold's end to its take-over, such a hand-off costs a thread
        switch, and under a faked wall clock (libfaketime) tens of milliseconds). A later
        waiter arms the key's timer (one per key and process; it keeps the earliest look,
        and covers the time after the first waiter is served) and sleeps
        :data:`WAITER_SLEEP`: the timer wakes the key's first waiter, a release the next
        one, so no waiter but the first looks without a signal."""
        with self.waiters.mutex:
            local = self.waiters.channels.get(channel)
            first = local is not None and bool(local) and next(iter(local.values())) is entry
        if first:
            return seconds
        with self.timer_mutex:
            if channel in self.waiters.channels:  # (not withdrawn meanwhile)
                self.timers.arm_earliest(channel, seconds)
        return WAITER_SLEEP

    # ------------------------------------------------------------ waking

    def _first(self, channel: str, watchers: bool) -> list[tuple[Waiter, Registration]]:
        """The first acquirer of ``channel`` and its first watcher (every watcher with
        ``watchers``), without going through the rest of the acquirers."""
        with self.waiters.mutex:
            waiters = self.waiters.channels.get(channel)
            if not waiters:
                return []
            wanted = self.watchers.get(channel, 0)
            if not watchers:
                wanted = min(wanted, 1)
            return first_acquirer_and_watchers(waiters.items(), _acquires, wanted)

    def wake_next(self, channel: str, released: bool = True) -> None:
        """``channel`` was freed: wake the local waiter that registered first to acquire it
        (it tries at once; the others wait for its release, or its withdrawal) and every
        local waiter that only waits for the key to be free. ``released``: a release woke
        it (one that finds the key taken again backs off from rings, see QUIET_FIRST)."""
        for waiter, entry in self._first(channel, True):
            if released and entry.acquirer:
                entry.woken = True
            waiter.wake()

    def wake_timed(self, channel: str) -> None:
        """The key's timer: wake its first acquirer and its first watcher to look again."""
        for waiter, _ in self._first(channel, False):
            waiter.wake()

    def wake_watchers(self, channel: str) -> None:
        """A watcher found the key free: so may the others."""
        if self.watchers.get(channel):
            self.wake_next(channel, released=False)

    def rung(self) -> None:
        """A release rang this process, for a key it does not name: wake the next waiter
        of every key this process waits for here (usually one)."""
        waiters = self.waiters
        with waiters.mutex:
            channels = [channel for channel in waiters.channels if not channel.startswith(LIFE_DIR)]
        for channel in channels:
            self.wake_next(channel)

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
            # The first waiter of every key (the dead holder's among them), every watcher;
            # not every waiter of the dead holder's keys: one look per key frees it.
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
        self.watchers = {}
        self.timer_mutex = threading.Lock()
        self.timers = self._timers()  # (the scheduler starts the child with no jobs)


def _acquires(entry: Registration) -> bool:
    return entry.acquirer
