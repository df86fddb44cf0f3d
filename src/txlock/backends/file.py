"""The filesystem backend: locks shared by the processes of one host.

Layout of a lock directory (see ``docs/file.md``)::

    DIR/<sha256 of the key>.lock   one record per key, rewritten in place under its flock
    DIR/tokens                     the highest token of every record file ever removed
    DIR/life/<32 hex digits>       one "proof of life" file per process, flocked by it

A key's file name is the SHA-256 of the key's bytes, so no key can escape the directory,
collide with another key or exceed a name length limit; the key itself is stored inside
the record. Every change to a record happens under an exclusive ``flock`` of its file, so
two processes never both win a grant or a break. Records carry two CRC-32 checks (one on
the token counter, one binding the counter to the body), so a reader that races a writer,
or finds the leftovers of a writer killed mid-write, sees a torn record as such: it then
re-reads under a shared lock, and a record that is still not whole is a broken hold.

A hold without ``hold_timeout`` names the *life file* of the process that took it. The
process keeps an exclusive ``flock`` on its life file until it exits, so the kernel itself
says whether the owner is alive: no PID (PIDs are reused) and no heartbeat is involved.

Waiters are woken by inotify (Linux): a waiter writes its process's *bell* into the record;
a release *rings* the oldest bell by touching that process's life file, and that process's
watcher thread (one per process) wakes one local waiter. A death is seen the same way (the
kernel closes a dead process's life file, which inotify reports). Elsewhere waiters poll
with a short exponential backoff.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import re
import stat
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote, urlencode

from txlock import _inotify, _scheduler
from txlock._errors import BackendError, BackendUnavailable, ConfigurationError, CorruptRecord
from txlock._manager import BaseLockManager, parse_bool
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import decode, encode
from txlock._waiter import Waiter

__all__ = ["FileSystemLockManager", "key_filename"]

log = logging.getLogger("txlock.file")

P = ParamSpec("P")
R = TypeVar("R")

#: The longest a waiter sleeps without a wake-up while inotify watches the directory.
SAFETY_NET = 0.25
#: The fallback poll (no inotify): first and longest interval of the backoff.
POLL_FIRST, POLL_MAX = 0.001, 0.05
#: A waiter that has waited this long reserves the next grant (if it is the oldest).
RESERVE_AFTER = 0.05
#: For this long after a reservation is made, the holder's process may still re-acquire
#: (batching hand-offs under contention); then only the reserver is served.
GRACE = 0.005
#: A waiter woken in vain (the key held again) is not rung for this long, doubling up to
#: QUIET_MAX; it looks again by itself at the end.
QUIET_FIRST, QUIET_MAX = 0.0005, 0.008
#: Processes with waiters that a record remembers, to ring the oldest at each release.
BELLS = 8
#: A reservation not refreshed for this long is void (its waiter stopped trying).
RESERVATION_STALE = 2.0
#: How often this process removes the files of keys it freed.
GC_INTERVAL = 5.0
#: Open record descriptors kept per process and directory, for the keys used last (so an
#: acquire+release of a hot key costs no open/close; bounded, so held keys cost none).
FD_CACHE = 8
#: Records larger than this are not records (a foreign file).
_MAX_RECORD = 1 << 24

# ---------------------------------------------------------------- the record format (pure)

# counter u64, crc32(counter) u32, magic u32, body length u32, crc32(counter + body) u32
_HEAD = struct.Struct("<QIIII")
# state, number of bells, acquired_at, expires_at (0 = bound to its process), ttl (0 = none),
# pid, life id, reservation id, reservation since (when its waiter began to wait),
# reservation last seen, reservation made at, reservation life id, key length, holder
# length; then the bells, the key and the holder bytes.
_BODY = struct.Struct("<BB2xdddI16s8sddd16sII")
# A bell: a process with waiters on the key (its life id), since when its oldest local
# waiter waits, when it last said so, and until when not to ring it (it looks by itself
# then). A release rings the first (the oldest) only.
_BELL = struct.Struct("<16sddd")
_Bell = tuple[bytes, float, float, float]
_FULL = struct.Struct("<QIIII" + _BODY.format[1:])  # head and body in one unpack
_MAGIC = 0x324C5854  # b"TXL2"
_HW = struct.Struct("<QI")
_NO_LIFE = bytes(16)
_NO_RES = bytes(8)
_NAME_RE = re.compile(r"[0-9a-f]{64}\.lock")
_LIFE_RE = re.compile(r"[0-9a-f]{32}")
_LIFE_DIR = "life"
_TOKENS = "tokens"


class _Rec:
    """One decoded record (the state of one key)."""

    # _decode_record builds records with _new_rec and sets every slot itself.

    __slots__ = (
        "acquired_at",
        "bells",
        "counter",
        "expires_at",
        "held",
        "holder",
        "key",
        "life",
        "pid",
        "res_at",
        "res_id",
        "res_life",
        "res_seen",
        "res_since",
        "ttl",
    )

    def __init__(self, counter: int, key: bytes) -> None:
        self.counter = counter  # the last token issued for this key
        self.key = key
        self.held = False
        self.holder = b""
        self.acquired_at = 0.0
        self.expires_at = 0.0  # wall clock; 0 = bound to the life of its process
        self.ttl = 0.0
        self.pid = 0
        self.life = _NO_LIFE
        self.res_id = _NO_RES
        self.res_since = 0.0
        self.res_seen = 0.0
        self.res_at = 0.0
        self.res_life = _NO_LIFE
        self.bells: list[_Bell] = []  # oldest first

    def grant(self, holder: bytes, ttl: float | None, now: float, life: bytes, token: int) -> None:
        self.held = True
        self.holder = holder
        self.counter = token
        self.acquired_at = now
        self.pid = _pid
        self.bind(ttl, now, life)

    def bind(self, ttl: float | None, now: float, life: bytes) -> None:
        """Set the hold's end: ``ttl`` seconds from now, or the life of process ``life``."""
        if ttl is None:
            self.expires_at, self.ttl, self.life = 0.0, 0.0, life
        else:
            self.expires_at, self.ttl, self.life = now + ttl, ttl, _NO_LIFE

    def free(self) -> None:
        self.held = False
        self.holder = b""
        self.acquired_at = self.expires_at = self.ttl = 0.0
        self.pid = 0
        self.life = _NO_LIFE

    def unreserve(self) -> None:
        self.res_id, self.res_since, self.res_seen, self.res_at, self.res_life = _NO_RES, 0.0, 0.0, 0.0, _NO_LIFE

    def add_bell(self, life: bytes, since: float, now: float, quiet: float = 0.0) -> bool:
        """Ask to be rung at a release (process ``life``, waiting since ``since``, not before
        ``quiet``); whether the record changed. Stale bells go; beyond ``BELLS`` the youngest
        is left out (its waiters look again at the safety net and get in as older ones are
        served)."""
        bells = self.bells
        for i, (other, since0, seen, quiet0) in enumerate(bells):
            if other == life:
                if since < since0 or now - seen > RESERVATION_STALE / 4 or quiet != quiet0:
                    bells[i] = (life, min(since, since0), now, quiet)
                    bells.sort(key=_since)
                    return True
                return False
        kept = [bell for bell in bells if now - bell[2] < RESERVATION_STALE]
        kept.append((life, since, now, quiet))
        kept.sort(key=_since)
        del kept[BELLS:]
        changed = kept != bells
        self.bells = kept
        return changed

    def drop_bell(self, life: bytes) -> bool:
        """No more waiters in process ``life``; whether the record changed."""
        kept = [bell for bell in self.bells if bell[0] != life]
        changed = len(kept) != len(self.bells)
        self.bells = kept
        return changed

    def in_grace(self, now: float) -> bool:
        """Whether a reservation stands but is younger than ``GRACE`` (the holder's process
        may still re-acquire; the reserver sleeps until the grace ends)."""
        return self.res_id != _NO_RES and now < self.res_at + GRACE


_new_rec = object.__new__


def _since(bell: _Bell) -> float:
    return bell[1]


def _encode_record(rec: _Rec) -> bytes:
    body = (
        _BODY.pack(
            1 if rec.held else 0,
            len(rec.bells),
            rec.acquired_at,
            rec.expires_at,
            rec.ttl,
            rec.pid & 0xFFFFFFFF,
            rec.life,
            rec.res_id,
            rec.res_since,
            rec.res_seen,
            rec.res_at,
            rec.res_life,
            len(rec.key),
            len(rec.holder),
        )
        + b"".join([_BELL.pack(*bell) for bell in rec.bells])
        + rec.key
        + rec.holder
    )
    cb = rec.counter.to_bytes(8, "little")
    ccrc = zlib.crc32(cb)
    return _HEAD.pack(rec.counter, ccrc, _MAGIC, len(body), zlib.crc32(body, ccrc)) + body


def _decode_record(data: bytes) -> tuple[_Rec | None, int | None]:
    """``(record, counter)``: the record if ``data`` holds a whole one, and the token counter
    whenever its own check passes (it survives a body torn by a writer killed mid-write)."""
    if len(data) < _FULL.size:
        return None, _decode_counter(data)
    (counter, ccrc, magic, blen, bcrc, state, nbells, acquired, expires, ttl, pid, life, res_id, res_since, res_seen,
     res_at, res_life, klen, hlen) = _FULL.unpack_from(data)
    if zlib.crc32(data[:8]) != ccrc:
        return None, None
    end = _HEAD.size + blen
    if magic != _MAGIC or _BODY.size + nbells * _BELL.size + klen + hlen != blen or len(data) < end:
        return None, counter
    if zlib.crc32(data[_HEAD.size : end], ccrc) != bcrc:
        return None, counter
    rec = _new_rec(_Rec)
    start = _FULL.size + nbells * _BELL.size
    rec.bells = [_BELL.unpack_from(data, at) for at in range(_FULL.size, start, _BELL.size)] if nbells else []
    rec.counter, rec.key, rec.holder = counter, data[start : start + klen], data[start + klen : end]
    rec.held, rec.acquired_at, rec.expires_at, rec.ttl, rec.pid, rec.life = (
        state == 1, acquired, expires, ttl, pid, life
    )
    rec.res_id, rec.res_since, rec.res_seen, rec.res_at, rec.res_life = res_id, res_since, res_seen, res_at, res_life
    return rec, counter


def _decode_counter(data: bytes) -> int | None:
    """The token counter of a record whose body is not whole, if its own check passes."""
    if len(data) < _HEAD.size:
        return None
    counter, ccrc = _HEAD.unpack_from(data)[:2]
    return counter if zlib.crc32(data[:8]) == ccrc else None


def _encode_hw(value: int) -> bytes:
    raw = value.to_bytes(8, "little")
    return _HW.pack(value, zlib.crc32(raw))


def _decode_hw(data: bytes) -> int | None:
    if len(data) < _HW.size:
        return None
    value, crc = _HW.unpack_from(data)
    return value if zlib.crc32(data[:8]) == crc else None


@functools.lru_cache(maxsize=1024)
def key_filename(key: str) -> str:
    """The name of ``key``'s record file: 64 hex digits of SHA-256 of the key + ``.lock``.

    Any ``str`` (empty, ``..``, ``/``, NUL, lone surrogates, any length) maps to a plain
    name inside the directory; distinct keys map to distinct names.
    """
    return hashlib.sha256(encode(key)).hexdigest() + ".lock"


# ---------------------------------------------------------------- descriptors and fork safety

# Every descriptor this module opens is registered here while it is open, under a lock the
# fork hook takes: a child forked by another thread closes them at once, so it can never
# keep alive a flock that the parent thinks it released (flock belongs to the open file
# description, which fork shares).
_fork_lock = threading.Lock()
_inflight: set[int] = set()
_pid = os.getpid()  # (os.getpid() is a system call; the fork hook refreshes this)

# The calls of the hot path, looked up once.
_flock, _LOCK_EX, _LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN
_fstat, _pread, _pwrite = os.fstat, os.pread, os.pwrite

_RO = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_RW = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_RWC = _RW | os.O_CREAT


def _open(name: str, flags: int, dir_fd: int, mode: int = 0o600) -> int:
    with _fork_lock:
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
        _inflight.add(fd)
    return fd


def _close(fd: int) -> None:
    with _fork_lock:
        _inflight.discard(fd)
        os.close(fd)


def _read_all(fd: int) -> bytes:
    data = os.pread(fd, 4096, 0)
    if len(data) == 4096:  # a long key or holder: the record may go on
        need = _HEAD.size + int.from_bytes(data[16:20], "little")
        if 4096 < need <= _MAX_RECORD:
            data += os.pread(fd, need - 4096, 4096)
    return data


def _write_all(fd: int, data: bytes) -> None:
    written = _pwrite(fd, data, 0)
    if written != len(data):  # only a full disk does this to a local file
        raise OSError(errno.ENOSPC, "short write of a lock record")


# ---------------------------------------------------------------- inotify (Linux): txlock._inotify

#: True: this process's waiters never use inotify and poll instead (the tests set it; the
#: shared watcher itself reports an unavailable inotify as ``None``).
_inotify_failed = False


# ---------------------------------------------------------------- per process and directory state


class _Reg:
    """What a waiter registered (kept in ``Waiter.data``)."""

    __slots__ = ("acquirer", "backoff", "fails", "ident", "names", "quiet", "reserved", "since")

    def __init__(self, since: float, acquirer: bool) -> None:
        self.since = since
        self.acquirer = acquirer  # False: waits for the key to be free without taking it
        self.ident = os.urandom(8)
        self.names: set[str] = set()
        self.reserved = False
        self.backoff = POLL_FIRST
        self.fails = 0  # attempts that found the key held
        self.quiet = 0.0  # the current interval without rings


class _Dir:
    """Everything this process keeps for one lock directory (shared by every manager on it)."""

    def __init__(self, path: str, fd: int, life_fd: int, mode: int, ident: tuple[int, int]) -> None:
        self.path = path
        self.fd = fd
        self.life_dir = life_fd
        self.file_mode = mode & 0o666
        self.ident = ident
        self.mutex = threading.Lock()
        self.refs = 1
        self.life_id: bytes | None = None
        self.life_fd = -1
        self.waiters: dict[str, dict[Waiter, None]] = {}  # in order of registration
        self.watcher: _inotify.Inotify | None = None  # the one that holds ``watches``
        self.watches: list[int] = []
        self.watching: bool | None = None  # None: not tried yet
        self.seen: set[str] = set()  # names handled in the watcher's current read
        self.seen_batch = -1
        self.freed: set[str] = set()
        self.gc_job: _scheduler.Job | None = None
        self.bound: set[str] = set()  # keys whose hold this process bound to its life
        self.fds: dict[str, int] = {}  # idle record descriptors (unlocked), least recent first
        self.retired = False

    # ------------------------------------------------------------ record descriptors

    def checkin(self, name: str, fd: int) -> None:
        """Unlock a record descriptor from ``_locked`` and keep it for the next call on
        ``name`` (the least recently used beyond ``FD_CACHE`` is closed)."""
        try:
            _flock(fd, _LOCK_UN)
        except BaseException:
            _close(fd)
            raise
        fds = self.fds
        if fds.setdefault(name, fd) != fd:  # atomic: another thread kept one meanwhile
            _close(fd)
        elif len(fds) > FD_CACHE or self.retired:
            with self.mutex:
                while len(fds) > (0 if self.retired else FD_CACHE):
                    try:  # other threads take and give back descriptors without the mutex
                        old = fds.pop(next(iter(fds)))
                    except (RuntimeError, KeyError, StopIteration):
                        continue
                    _close(old)

    def drop_fds(self) -> None:
        with self.mutex:
            fds = list(self.fds.values())
            self.fds.clear()  # the same dict: a checkin racing this sees ``retired`` and closes
        for fd in fds:
            with contextlib.suppress(OSError):
                _close(fd)

    # ------------------------------------------------------------ life

    def own_life(self) -> bytes:
        """The life id of this process in this directory (its life file is made on first use)."""
        life = self.life_id
        if life is not None:
            return life
        with _fork_lock:
            if self.life_id is None:
                life = os.urandom(16)
                tmp = f"tmp-{life.hex()}"
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             self.file_mode, dir_fd=self.life_dir)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # never blocks: nobody else knows the name
                    os.write(fd, f"{os.getpid()}\n".encode())
                    # Published only once locked, so no sweeper can take it for dead.
                    os.rename(tmp, life.hex(), src_dir_fd=self.life_dir, dst_dir_fd=self.life_dir)
                except BaseException:
                    os.close(fd)
                    raise
                self.life_fd, self.life_id = fd, life
                swept = True
            else:
                swept = False
        if swept:
            self.sweep_lives()
        assert self.life_id is not None
        return self.life_id

    def alive(self, life: bytes) -> bool:
        """Whether the process named by ``life`` still holds its life file's flock."""
        if life == self.life_id:
            return True
        if life == _NO_LIFE:
            return False
        try:
            fd = _open(life.hex(), _RO, self.life_dir)
        except FileNotFoundError:
            return False  # removed only once dead
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False  # not a life file of ours
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            _close(fd)
        return False

    def bury(self, life: bytes) -> None:
        """Remove the life file of a dead process (death is final: nobody locks it again)."""
        if life not in (_NO_LIFE, self.life_id):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(life.hex(), dir_fd=self.life_dir)

    def sweep_lives(self, limit: int = 64) -> None:
        """Remove up to ``limit`` life files of dead processes."""
        try:
            with os.scandir(self.life_dir) as entries:
                names = [e.name for e in entries]
        except OSError:
            return
        for name in names[:limit]:
            if _LIFE_RE.fullmatch(name):
                life = bytes.fromhex(name)
                if life != self.life_id and not self.alive(life):
                    self.bury(life)

    # ------------------------------------------------------------ waiters

    def register(self, name: str, waiter: Waiter, acquirer: bool = True) -> _Reg:
        reg = waiter.data
        if reg is None:
            reg = waiter.data = _Reg(time.time(), acquirer)
        if name not in reg.names:
            reg.names.add(name)
            with self.mutex:
                self.waiters.setdefault(name, {})[waiter] = None
            if self.watching is None:
                self.start_watching()
        assert isinstance(reg, _Reg)
        return reg

    def unregister(self, waiter: Waiter) -> _Reg | None:
        reg = waiter.data
        waiter.data = None
        if not isinstance(reg, _Reg):
            return None
        with self.mutex:
            for name in reg.names:
                waiters = self.waiters.get(name)
                if waiters is not None:
                    waiters.pop(waiter, None)
                    if not waiters:
                        del self.waiters[name]
        return reg

    def wake(self, name: str) -> None:
        with self.mutex:
            waiters = list(self.waiters.get(name, ()))
        for waiter in waiters:
            waiter.wake()

    def wake_next(self, name: str) -> None:
        """``name`` was freed: wake the local waiter that registered first to acquire it (it
        tries at once; the others wait for its release, or its withdrawal) and every local
        waiter that only waits for the key to be free. Waking one acquirer per process and
        release, not all, keeps a release from stampeding every waiting thread."""
        with self.mutex:
            waiters = self.waiters.get(name)
            if not waiters:
                return
            chosen: list[Waiter] = []
            first = True
            for waiter in waiters:
                reg = waiter.data
                if not (isinstance(reg, _Reg) and reg.acquirer):
                    chosen.append(waiter)
                elif first:
                    chosen.append(waiter)
                    first = False
        for waiter in chosen:
            waiter.wake()

    def rung(self) -> None:
        """A release rang this process (see ``_ring``), for a key it does not name: wake the
        next waiter of every key this process waits for here (usually one)."""
        with self.mutex:
            names = [name for name in self.waiters if not name.startswith(_LIFE_DIR)]
        for name in names:
            self.wake_next(name)

    def wake_all(self) -> None:
        with self.mutex:
            waiters = [w for ws in self.waiters.values() for w in ws]
        for waiter in waiters:
            waiter.wake()

    def life_closed(self, name: str) -> None:
        """The owner of a life file closed it: it is dying. Wait (briefly) until the kernel
        drops its flock, which happens just after the close event, then wake the waiters
        watching it, and the next waiter of every key: one that has slept since the dead
        process took its key (a quiet interval, a grace) has not learned its life yet."""
        with self.mutex:
            if not self.waiters:
                return
        life = bytes.fromhex(name[len(_LIFE_DIR) + 1 :])
        tries = iter(range(_LIFE_PROBES))

        def probe() -> bool:
            # On the scheduler thread, one flock probe per run: the inotify thread, which
            # serves every wake-up of the process, never sleeps here.
            if next(tries, None) is not None and self.alive(life):
                return True  # look again in _LIFE_PROBE_EVERY
            self.wake(name)
            self.rung()
            return False

        _scheduler.schedule(probe, _LIFE_PROBE_EVERY, name="txlock life check", first_delay=0)

    def start_watching(self) -> None:
        with self.mutex:
            if self.watching is not None:
                return
            self.watching = False
        inotify = None if _inotify_failed else _inotify.get()
        if inotify is None:
            return
        proc = os.path.isdir("/proc/self/fd")
        try:
            self.own_life()
            self.watcher = inotify
            self.watches.append(
                inotify.watch(f"/proc/self/fd/{self.fd}" if proc else self.path, _inotify.IN_DELETE, self.on_event)
            )
            mask = _inotify.IN_CLOSE_WRITE | _inotify.IN_DELETE | _inotify.IN_ATTRIB  # deaths, burials, rings
            self.watches.append(
                inotify.watch(
                    f"/proc/self/fd/{self.life_dir}" if proc else os.path.join(self.path, _LIFE_DIR),
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
        self.dispatch(mask, f"{_LIFE_DIR}/{name.decode('ascii', 'replace')}", True)

    def dispatch(self, mask: int, name: str, life: bool) -> None:
        """Wake the waiters an event concerns; a name is handled once per read (batch)."""
        if mask & _inotify.IN_Q_OVERFLOW:  # events were lost
            self.wake_all()
            return
        if mask & _inotify.IN_IGNORED:  # the directory went away
            self.watch_lost()
            return
        watcher = self.watcher
        if watcher is not None and watcher.batch != self.seen_batch:
            self.seen_batch = watcher.batch
            self.seen.clear()
        if name in self.seen:  # once per name and read of the descriptor
            return
        self.seen.add(name)
        if life:
            if mask & _inotify.IN_CLOSE_WRITE:
                self.life_closed(name)
            elif mask & _inotify.IN_ATTRIB:
                # A ring (see _ring): ours, or another process's (ignored). Not a watch on
                # our own life file: an inotify mark on it delays, at exit, the release of
                # its flock by milliseconds, and so the recovery of our holds.
                if self.life_id is not None and name == f"{_LIFE_DIR}/{self.life_id.hex()}":
                    self.rung()
                else:
                    self.seen.discard(name)  # rings are not deduplicated per read
            else:
                self.wake(name)
        else:
            self.wake(name)  # removed

    def watch_lost(self) -> None:
        self.watching = False
        self.wake_all()

    def retry_net(self, reg: _Reg | None) -> float:
        """The longest a waiter may sleep without a wake-up."""
        if self.watching:
            return SAFETY_NET
        if reg is None:
            return POLL_FIRST
        interval = reg.backoff
        reg.backoff = min(POLL_MAX, interval * 2)
        return interval

    # ------------------------------------------------------------ tokens high-water mark

    def read_hw(self) -> int:
        try:
            fd = _open(_TOKENS, _RO, self.fd)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            data = os.pread(fd, _HW.size, 0)
        finally:
            _close(fd)
        value = _decode_hw(data)
        if value is None and data:
            log.warning("%s is damaged; fencing tokens of new record files restart at 1",
                        os.path.join(self.path, _TOKENS))
        return value or 0

    def raise_hw(self, counter: int) -> None:
        fd = _open(_TOKENS, _RWC, self.fd, self.file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = _decode_hw(os.pread(fd, _HW.size, 0)) or 0
            if counter > current:
                _write_all(fd, _encode_hw(counter))
        finally:
            _close(fd)

    # ------------------------------------------------------------ garbage collection

    def gc(self) -> bool:
        """Remove the record files of keys this process freed that are still free."""
        with self.mutex:
            names, self.freed = self.freed, set()
            if not names:
                self.gc_job = None
                return False
        for name in names:
            try:
                self.collect(name)
            except OSError as exc:
                log.debug("could not remove %s: %s", name, exc)
        return True

    def collect(self, name: str) -> None:
        try:
            fd = _open(name, _RW, self.fd)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # in use right now: it is not idle
            st = os.fstat(fd)
            if st.st_nlink == 0 or not stat.S_ISREG(st.st_mode):
                return
            rec, _counter = _decode_record(_read_all(fd))
            if rec is None:
                return  # empty or broken: left for the next writer to repair
            now = time.time()
            if rec.held and _live(self, rec, now):
                return
            if _reserved(self, rec, now):
                return  # a waiter is about to take it
            if rec.counter:
                self.raise_hw(rec.counter)  # before the unlink: a new file starts above it
            os.unlink(name, dir_fd=self.fd)
        finally:
            _close(fd)

    # ------------------------------------------------------------ life cycle

    def retire(self) -> None:
        """The last manager on this directory closed: drop what the process keeps for it."""
        with contextlib.suppress(OSError):
            self.gc()
        with _dirs_mutex:
            if self.refs > 0:
                return
            with self.mutex:
                if self.bound:  # holds bound to this process: its life must go on
                    return
                self.retired = True
                if self.gc_job is not None:
                    self.gc_job.cancel()
                    self.gc_job = None
            _dirs.pop(self.ident, None)
        inotify = self.watcher
        if inotify is not None:
            for wd in self.watches:
                with contextlib.suppress(OSError):
                    inotify.unwatch(wd)
        self.watches.clear()
        self.wake_all()
        self.drop_fds()
        with _fork_lock:
            if self.life_id is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.life_id.hex(), dir_fd=self.life_dir)
                os.close(self.life_fd)
                self.life_id, self.life_fd = None, -1
            os.close(self.life_dir)
            os.close(self.fd)

    def after_fork(self) -> None:
        """In a forked child: the parent's life, waiters and watches are not ours."""
        self.mutex = threading.Lock()
        if self.life_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.life_fd)  # close, never unlock: the parent still holds it
        self.life_id, self.life_fd = None, -1
        self.waiters = {}
        self.watcher = None  # the parent's: txlock._inotify makes the child its own
        self.watches = []
        self.watching = None
        self.freed = set()
        self.gc_job = None
        self.bound = set()
        self.fds = {}  # closed with every registered descriptor by the fork hook


#: After a life file's close event: how often, and how many times, to look whether the
#: kernel has dropped the dead process's flock (it does just after the close) before
#: waking the waiters anyway.
_LIFE_PROBE_EVERY = 0.00025
_LIFE_PROBES = 40

_dirs: dict[tuple[int, int], _Dir] = {}
_dirs_mutex = threading.Lock()


def _attach(path: str, mode: int, create: bool = False) -> _Dir:
    """The state of directory ``path`` in this process (created, with ``mode``, if missing;
    its parent too when ``create``)."""
    _detach_pending()
    parent = os.path.dirname(path)
    if not create and not os.path.lexists(parent):
        # A typo in the path must not silently make a separate set of locks.
        raise ConfigurationError(
            f"cannot use lock directory {path}: its parent {parent} does not exist; create it, fix the "
            "path, or pass create=True (URL: ?create=true) to create the parents"
        )
    try:
        try:
            if create:
                os.makedirs(parent, exist_ok=True)
            os.mkdir(path, mode)
            os.chmod(path, mode)  # the umask must not loosen or tighten what was asked
        except FileExistsError:
            pass
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _translate(exc, path, "open the lock directory") from exc
    try:
        try:
            os.mkdir(_LIFE_DIR, mode, dir_fd=fd)
            created = True
        except FileExistsError:
            created = False
        life_fd = os.open(_LIFE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        if created:
            os.fchmod(life_fd, mode)
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise _translate(exc, path, f"open {os.path.join(path, _LIFE_DIR)}") from exc
    ident = (st.st_dev, st.st_ino)
    with _dirs_mutex:
        d = _dirs.get(ident)
        if d is not None and not d.retired:
            d.refs += 1
            os.close(fd)
            os.close(life_fd)
            return d
        d = _Dir(path, fd, life_fd, mode, ident)
        _dirs[ident] = d
        return d


# Managers collected without close() leave their share here: a finalizer may run inside any
# allocation, even one made under a lock of this module, so it only appends.
_pending: list[_Dir] = []


def _detach_pending() -> None:
    while _pending:
        try:
            d = _pending.pop()
        except IndexError:
            return
        _detach(d)


def _detach(d: _Dir) -> None:
    with _dirs_mutex:
        d.refs -= 1
        last = d.refs <= 0
    if last:
        d.retire()


def _before_fork() -> None:
    _fork_lock.acquire()


def _after_fork_parent() -> None:
    _fork_lock.release()


def _after_fork_child() -> None:
    global _fork_lock, _inflight, _dirs_mutex, _pid
    _pid = os.getpid()
    for fd in _inflight:
        with contextlib.suppress(OSError):
            os.close(fd)  # close, never unlock: the parent still holds what it holds
    _inflight = set()
    _fork_lock = threading.Lock()
    _dirs_mutex = threading.Lock()
    for d in _dirs.values():
        d.after_fork()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)


# ---------------------------------------------------------------- hold logic shared by every primitive


def _live(d: _Dir, rec: _Rec, now: float) -> bool:
    """Whether the hold in ``rec`` is in force: not expired, and its process alive."""
    if not rec.held:
        return False
    if rec.expires_at:
        return now < rec.expires_at
    return d.alive(rec.life)


def _reserved(d: _Dir, rec: _Rec, now: float) -> bool:
    """Whether ``rec`` carries a reservation still in force."""
    return rec.res_id != _NO_RES and now - rec.res_seen < RESERVATION_STALE and d.alive(rec.res_life)


def _peek(d: _Dir, name: str, block: bool = True) -> _Rec | None:
    """Read a record without taking part in any exclusion: ``None`` when absent or broken."""
    try:
        fd = _open(name, _RO, d.fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):
            return None  # a foreign file is no hold
        raise
    try:
        try:
            data = _read_all(fd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ESPIPE, errno.EINVAL):
                return None
            raise
        if not data:
            return None
        rec, _ = _decode_record(data)
        if rec is None:
            # Mid-write: read it again once the writer is done.
            fcntl.flock(fd, fcntl.LOCK_SH if block else fcntl.LOCK_SH | fcntl.LOCK_NB)
            rec, _ = _decode_record(_read_all(fd))
        return rec
    finally:
        _close(fd)


def _ring(d: _Dir, fd: int, rec: _Rec, now: float) -> None:
    """Write ``rec`` (under the exclusive lock) after a release, then ring the process of
    its oldest waiter: change the times of that process's life file, which inotify reports
    (``IN_ATTRIB``) to that process alone, which wakes one local waiter. Other writes
    (grants, renewals, reservations) ring no one; nor does a release while a young
    reservation stands (``GRACE``): the reserver wakes at its end by itself. Waiters of this
    process are woken directly (``_freed``)."""
    target = None
    if rec.bells and not rec.in_grace(now):
        while rec.bells:
            life, _since, seen, quiet = rec.bells[0]
            if now - seen >= RESERVATION_STALE:
                del rec.bells[0]
                continue
            if life != d.life_id and now >= quiet:
                target = life
            break
    while True:
        _write_all(fd, _encode_record(rec))
        if target is None:
            return
        try:
            os.utime(target.hex(), dir_fd=d.life_dir, follow_symlinks=False)
            return
        except FileNotFoundError:  # that process is gone: ring the next one
            rec.drop_bell(target)
            target = rec.bells[0][0] if rec.bells and rec.bells[0][0] != d.life_id else None


_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__


def _lease(key: str, holder: str, rec: _Rec) -> Lease:
    return _new_tuple(Lease, (key, holder, rec.counter, rec.expires_at or None, rec.ttl or None))


def _info(rec: _Rec) -> LockInfo:
    return LockInfo(decode(rec.key), decode(rec.holder), rec.counter, rec.acquired_at, rec.expires_at or None, None)


def _translate(exc: OSError, path: str, doing: str) -> BackendError:
    """The one place where operating-system errors become txlock errors."""
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.ENODEV):
        return BackendUnavailable(
            f"lock directory {path} is gone or unreachable ({reason}) while trying to {doing}; "
            "recreate it or point the manager at another directory"
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BackendError(
            f"cannot {doing} in lock directory {path}: {reason}; check the directory's owner, mode and mount"
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return BackendError(f"cannot {doing} in lock directory {path}: {reason}; free some space")
    if code in (errno.EMFILE, errno.ENFILE):
        return BackendError(f"cannot {doing} in lock directory {path}: {reason}; raise the descriptor limit")
    return BackendError(f"cannot {doing} in lock directory {path}: {reason}")


def _translated(
    doing: str,
) -> Callable[[Callable[Concatenate[FileSystemLockManager, P], R]], Callable[Concatenate[FileSystemLockManager, P], R]]:
    def decorate(
        fn: Callable[Concatenate[FileSystemLockManager, P], R],
    ) -> Callable[Concatenate[FileSystemLockManager, P], R]:
        @functools.wraps(fn)
        def wrapper(self: FileSystemLockManager, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(self, *args, **kwargs)
            except BackendError:
                raise
            except OSError as exc:
                raise _translate(exc, self.directory, doing) from exc

        return wrapper

    return decorate


# ---------------------------------------------------------------- the manager


class FileSystemLockManager(BaseLockManager):
    """Locks shared by the processes of one host, kept as files in one directory.

    ``FileSystemLockManager("/var/lock/myapp")`` or ``file:///var/lock/myapp``. The
    directory is created (mode ``0o700`` unless ``mode`` says otherwise) if missing; its
    parent must exist (a typo must not make a separate set of locks) unless
    ``create=True`` (``?create=true``) asks for the missing parents too. Every
    manager, copy and process naming the same directory shares the same locks. It is a
    drop-in for Prefect's ``FileSystemLockManager(lock_files_directory)``.

    Guarantees and limits:

    * Mutual exclusion across the threads, tasks and processes of a host: every change to a
      key's record is made under an exclusive ``flock`` of its file, so two callers never
      both win a grant, and breaking a dead or expired hold is atomic (the breaker re-reads
      the record under the lock, so it can never remove a fresh hold that replaced it).
    * No torn reads: records carry CRC-32 checks; a reader that catches a record mid-write
      re-reads it under a shared lock. A record that is still not whole (a writer killed
      mid-write, a foreign file) reads as a broken hold and is repaired by the next writer;
      a symlink, directory or other non-regular file at a key's name is never followed or
      written through: writers raise :class:`~txlock.CorruptRecord` naming it.
    * ``hold_timeout=None``: the hold lasts until released or until the process that took it
      exits; the kernel drops that process's ``flock`` on its life file at once, and inotify
      wakes the waiters, so a dead process's holds are taken over within milliseconds (the
      safety net is a re-check every 0.25 s). A child made with ``fork`` cannot end or keep
      alive its parent's holds. ``hold_timeout=T``: the hold ends T seconds after the grant
      on the wall clock (``time.time()``), whatever happens to its process; a step of the
      system clock moves that end with it.
    * Fencing tokens strictly increase per key, across processes and restarts (the counter
      lives in the record; removing a free record raises the directory's high-water mark
      first). Deleting the directory restarts them.
    * Waiters sleep on inotify wake-ups (Linux), else poll with a backoff from 1 ms to 50 ms.
      A release rings one process, that of the oldest waiter, which wakes one local waiter;
      async waiters hold no thread. Waiters are not served in strict arrival order (the
      process that just released a key may take it again at once), but none starves: a
      waiter that has waited 50 ms reserves the next grant unless an older waiter holds the
      reservation, and is served once the reservation is 5 ms old. ``LockInfo.waiters`` is
      ``None`` (waiters in other processes are not counted).
    * Files: one record per key (removed about 5 s after its key is freed by this process,
      if still free), one life file per process, one ``tokens`` file. Descriptors: two per
      directory and process, the life file, and the (unlocked) descriptors of the last
      ``FD_CACHE`` keys used; none per held lock.
    * Local file systems only: ``flock`` and inotify do not span hosts over NFS.
    """

    schemes = ("file",)
    capabilities = Capabilities(
        processes=True,
        notes=(
            "waiters in other processes are not counted",
            "no strict FIFO order; a waiter of 50 ms reserves the next grant",
        ),
    )
    _bounds_calls = False  # local files: no call waits on another host

    def __init__(
        self, directory: str | os.PathLike[str], *, mode: int = 0o700, create: bool = False, **options: Any
    ) -> None:
        super().__init__(**options)
        if not isinstance(create, bool):
            raise TypeError(f"create must be a bool, not {type(create).__name__}")
        self.create = create
        raw = os.fspath(directory)
        if not isinstance(raw, str):
            raise TypeError(f"directory must be a str or os.PathLike[str], not {type(directory).__name__}")
        if not raw:
            raise ConfigurationError("directory must not be empty; name the lock directory")
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"mode must be an int such as 0o700, not {type(mode).__name__}")
        if mode & ~0o7777 or mode & 0o700 != 0o700:
            raise ConfigurationError(f"mode {mode:#o} must give the owner rwx (0o700) and stay within 0o7777")
        self.directory = os.path.abspath(os.path.expanduser(raw))
        self.mode = mode
        self._state: _Dir | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._d()

    def _d(self) -> _Dir:
        state = self._state
        if state is None:
            state = _attach(self.directory, self.mode, self.create)
            self._finalizer = weakref.finalize(self, _pending.append, state)
            self._state = state
        return state

    def close(self) -> None:
        """Let go of this manager's share of the directory state; holds are not released.

        The directory descriptor and this process's life file are shared by every manager
        of the process on the directory, and are let go of with the last one only if no hold
        of this process is bound to its life. A closed manager reopens on next use.
        """
        finalizer, self._finalizer, state, self._state = self._finalizer, None, self._state, None
        if finalizer is not None and finalizer.detach() is not None and state is not None:
            _detach(state)
        _detach_pending()

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        return (self.directory, self.mode)

    def _init_kwargs(self) -> dict[str, Any]:
        return {"directory": self.directory, "mode": self.mode, "create": self.create, **self._common_kwargs()}

    def _url(self, *, redact: bool) -> str:
        query = self._common_query()
        if self.create:
            query = {"create": "true", **query}
        if self.mode != 0o700:
            query = {"mode": f"{self.mode:o}", **query}
        text = urlencode(query)
        return "file://" + quote(self.directory, safe="/") + (f"?{text}" if text else "")

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> FileSystemLockManager:
        from txlock._url import common_options, local_path

        path = local_path(url, "file", "file:///absolute/path")
        kwargs = common_options(options, allowed=("mode", "create"))
        if "create" in options:
            kwargs["create"] = parse_bool("create", options["create"])
        if "mode" in options:
            try:
                kwargs["mode"] = int(options["mode"], 8)
            except ValueError:
                raise ConfigurationError(f"option mode={options['mode']!r} is not an octal mode such as 700") from None
        return cls(path, **kwargs)

    def _parked_here(self, key: str) -> int:
        d = self._d()
        with d.mutex:
            return len(d.waiters.get(key_filename(key), ()))

    def path_for(self, key: str) -> str:
        """The path of ``key``'s record file (a hash of the key, always inside the directory)."""
        return os.path.join(self.directory, key_filename(key))

    # ------------------------------------------------------------------ record access

    def _locked(self, d: _Dir, name: str, create: bool) -> tuple[int, bytes] | None:
        """Take ``name``'s exclusive flock and read it: ``(descriptor, bytes)``, to be given
        back with ``d.checkin``; ``None`` if absent and not ``create``. A descriptor kept
        from an earlier call is used when there is one (no open, no close)."""
        fd = d.fds.pop(name, -1)
        while True:
            if fd < 0:
                fd = self._open_record(d, name, create)
                if fd < 0:
                    return None
            try:
                _flock(fd, _LOCK_EX)
                # Removed (by a collector, under its flock) or replaced (by anyone) since we
                # opened it: a kept descriptor must never write a record nobody else reads.
                if _fstat(fd).st_nlink:
                    data = _pread(fd, 4096, 0)
                    return fd, (data if len(data) < 4096 else _read_all(fd))
            except BaseException:
                _close(fd)
                raise
            _close(fd)  # removed or replaced: open what the name holds now
            fd = -1

    def _open_record(self, d: _Dir, name: str, create: bool) -> int:
        """A new descriptor of ``name`` (checked to be a regular file), or -1 if absent."""
        try:
            fd = _open(name, _RWC if create else _RW, d.fd, d.file_mode)
        except FileNotFoundError:
            if create:
                raise
            return -1
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP):
                raise self._foreign(name, exc) from exc
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._foreign(name, None)
            if st.st_size == 0 and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != d.file_mode:
                os.fchmod(fd, d.file_mode)  # a new file: the umask must not change its mode
        except BaseException:
            _close(fd)
            raise
        return fd

    def _foreign(self, name: str, exc: OSError | None) -> CorruptRecord:
        path = os.path.join(self.directory, name)
        what = "a symbolic link or special file" if exc is None or exc.errno != errno.EISDIR else "a directory"
        return CorruptRecord(
            f"{path} is {what}, not a txlock record; txlock never follows or writes through it. "
            "Remove it (nothing of txlock's is lost) and check who can write to the lock directory."
        )

    def _load(self, d: _Dir, data: bytes, name: str, kb: bytes) -> tuple[_Rec, bool]:
        """The record read under the exclusive lock; ``True`` when it must be rewritten."""
        if not data:
            return _Rec(d.read_hw(), kb), False  # a new file
        rec, counter = _decode_record(data)
        if rec is not None and rec.key == kb:
            return rec, False
        base = max(counter or 0, d.read_hw())
        log.warning(
            "lock file %s holds no whole record of this key (a writer died mid-write or a foreign "
            "file); treating it as a broken hold, token counter continues from %d",
            os.path.join(self.directory, name),
            base,
        )
        return _Rec(base, kb), True

    def _mark_waiting(self, d: _Dir, name: str, key: str, reg: _Reg) -> _Rec | None:
        """The live hold of ``key``, its record marked (under the lock) so that its release
        rings; ``None`` when the key is free."""
        locked = self._locked(d, name, create=False)
        if locked is None:
            return None
        fd, data = locked
        try:
            rec, _dirty = self._load(d, data, name, encode(key))
            now = time.time()
            if not _live(d, rec, now):
                return None
            if rec.add_bell(d.own_life(), reg.since, now):
                _write_all(fd, _encode_record(rec))
            return rec
        finally:
            d.checkin(name, fd)

    def _current(self, d: _Dir, key: str) -> _Rec | None:
        rec = _peek(d, key_filename(key))
        if rec is None or rec.key != encode(key) or not _live(d, rec, time.time()):
            return None
        return rec

    # ------------------------------------------------------------------ primitives

    @_translated("acquire a lock")
    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        d = self._d()
        name = key_filename(key)
        reg = d.register(name, waiter) if waiter is not None else None
        while True:
            result = self._attempt(d, name, key, holder, ttl, reg)
            if isinstance(result, Lease):
                if waiter is not None:
                    d.unregister(waiter)
                return result
            busy, life = result
            if waiter is None or reg is None or life is None or f"{_LIFE_DIR}/{life.hex()}" in reg.names:
                return busy
            # Watch the holder's process, then look again: a death between the attempt and
            # the registration must not go unnoticed until the safety net.
            d.register(f"{_LIFE_DIR}/{life.hex()}", waiter)
            if d.alive(life):
                return busy

    def _attempt(
        self, d: _Dir, name: str, key: str, holder: str, ttl: float | None, reg: _Reg | None
    ) -> Lease | tuple[Busy, bytes | None]:
        kb, hb = encode(key), encode(holder)
        locked = self._locked(d, name, create=True)
        assert locked is not None
        fd, data = locked
        try:
            rec, dirty = self._load(d, data, name, kb)
            now = time.time()
            live = _live(d, rec, now)
            if live and rec.holder == hb:
                # The same holder again: granted at once, token kept, expiry per this call.
                rec.bind(ttl, now, d.own_life() if ttl is None else _NO_LIFE)
                if reg is not None:
                    self._served(d, name, rec, reg)
                _write_all(fd, _encode_record(rec))
                self._bound(d, name, ttl)
                return _lease(key, holder, rec)
            if not live:
                ours = reg is not None and rec.res_id == reg.ident
                grace = rec.in_grace(now)  # (then the reserver's life is not even checked)
                reserved = not ours and rec.res_id != _NO_RES and (grace or _reserved(d, rec, now))
                if not reserved or ours or grace or (reg is not None and reg.since < rec.res_since):
                    dead = rec.life if rec.held else _NO_LIFE
                    rec.grant(hb, ttl, now, d.own_life() if ttl is None else _NO_LIFE, rec.counter + 1)
                    if not reserved:
                        rec.unreserve()  # none, ours, or void
                    if reg is not None:
                        self._served(d, name, rec, reg)
                    _write_all(fd, _encode_record(rec))
                    self._bound(d, name, ttl)
                    if dead != _NO_LIFE:
                        d.bury(dead)  # the dead process's life file, no longer needed
                    return _lease(key, holder, rec)
                # Free, but reserved by an older waiter: wait for its release.
                retry = min(rec.res_seen + RESERVATION_STALE - now, d.retry_net(reg))
                if (reg is not None and rec.add_bell(d.own_life(), reg.since, now)) or dirty:
                    _write_all(fd, _encode_record(rec))
                return Busy(None, max(retry, 0.0005)), None
            # Held by another: wait, and have the release ring. A waiter that has waited long
            # enough reserves the next grant, unless an older waiter holds the reservation
            # (so no waiter starves).
            write = False
            retry = d.retry_net(reg)
            if reg is not None:
                # Woken, and the key is held again: the holder's process re-acquired it. Ask
                # to be rung less often (backing off to QUIET_MAX), and look by then anyway:
                # a holder releasing many times in a row must not wake us every time.
                quiet = 0.0
                if reg.fails:
                    reg.quiet = min(max(reg.quiet * 2, QUIET_FIRST), QUIET_MAX)
                    quiet = now + reg.quiet
                    retry = min(retry, reg.quiet)
                reg.fails += 1
                write = rec.add_bell(d.own_life(), reg.since, now, quiet)
                if rec.res_id == reg.ident:
                    if now - rec.res_seen > RESERVATION_STALE / 4:
                        rec.res_seen, write = now, True
                elif now - reg.since >= RESERVE_AFTER and (reg.since < rec.res_since or not _reserved(d, rec, now)):
                    rec.res_id, rec.res_since, rec.res_seen, rec.res_at = reg.ident, reg.since, now, now
                    rec.res_life = d.own_life()
                    reg.reserved = write = True
                if rec.res_id == reg.ident and rec.in_grace(now):
                    retry = min(retry, rec.res_at + GRACE - now)  # releases ring no one until then
                if write:
                    _write_all(fd, _encode_record(rec))
            if rec.expires_at:
                retry = min(retry, max(rec.expires_at - now, 0.0005))
            return Busy(decode(rec.holder), max(retry, 0.0005)), (None if rec.expires_at else rec.life)
        finally:
            d.checkin(name, fd)

    def _served(self, d: _Dir, name: str, rec: _Rec, reg: _Reg) -> None:
        """A waiter of this process was granted ``rec``: its reservation and, if no other
        local waiter waits for the key, this process's bell are spent."""
        if rec.res_id == reg.ident:
            rec.unreserve()
        if rec.bells and len(d.waiters.get(name, ())) <= 1:
            rec.drop_bell(d.own_life())

    def _bound(self, d: _Dir, name: str, ttl: float | None) -> None:
        if ttl is None:  # set operations are atomic: no mutex needed
            d.bound.add(name)
        else:
            d.bound.discard(name)

    def _freed(self, d: _Dir, name: str) -> None:
        d.bound.discard(name)
        if name not in d.freed:  # (a stale answer only means the collector has it already)
            with d.mutex:
                d.freed.add(name)
                if d.gc_job is None and not d.retired:
                    d.gc_job = _scheduler.schedule(d.gc, GC_INTERVAL, name=f"gc {d.path}")
        if name in d.waiters:  # a waiter of this process, at once (others are rung: _ring)
            d.wake_next(name)

    @_translated("release a lock")
    def _release(self, key: str, holder: str) -> str | None:
        d = self._d()
        name = key_filename(key)
        locked = self._locked(d, name, create=False)
        if locked is None:
            return None
        fd, data = locked
        try:
            rec, dirty = self._load(d, data, name, encode(key))
            if rec.held and _live(d, rec, time.time()) and rec.holder != encode(holder):
                return decode(rec.holder)
            if not (rec.held or dirty):
                return None
            dead = rec.life if rec.held else _NO_LIFE
            rec.free()
            _ring(d, fd, rec, time.time())
        finally:
            d.checkin(name, fd)
        if dead != _NO_LIFE and not d.alive(dead):
            d.bury(dead)
        self._freed(d, name)
        return None

    @_translated("renew a lock")
    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        d = self._d()
        name = key_filename(key)
        locked = self._locked(d, name, create=False)
        if locked is None:
            return None
        fd, data = locked
        try:
            rec, _dirty = self._load(d, data, name, encode(key))
            now = time.time()
            if not (_live(d, rec, now) and rec.holder == encode(holder) and rec.counter == token):
                return None
            rec.bind(ttl, now, d.own_life() if ttl is None else _NO_LIFE)
            _write_all(fd, _encode_record(rec))
        finally:
            d.checkin(name, fd)
        self._bound(d, name, ttl)
        return _lease(key, holder, rec)

    @_translated("read a lock")
    def _holder(self, key: str) -> str | None:
        rec = self._current(self._d(), key)
        return None if rec is None else decode(rec.holder)

    @_translated("inspect a lock")
    def _inspect(self, key: str) -> LockInfo | None:
        rec = self._current(self._d(), key)
        return None if rec is None else _info(rec)

    @_translated("list the locks")
    def _list(self, prefix: str | None) -> list[LockInfo]:
        d = self._d()
        with os.scandir(d.fd) as entries:
            names = [e.name for e in entries if _NAME_RE.fullmatch(e.name)]
        now = time.time()
        found: list[tuple[str, LockInfo]] = []
        for name in names:
            rec = _peek(d, name)
            if rec is None or not _live(d, rec, now):
                continue
            try:
                key = decode(rec.key)
            except UnicodeDecodeError:
                continue
            if key_filename(key) != name or (prefix is not None and not key.startswith(prefix)):
                continue  # a record copied under a foreign name is not a lock
            found.append((key, _info(rec)))
        found.sort(key=lambda item: item[0])
        return [info for _, info in found]

    @_translated("force-release a lock")
    def _force_release(self, key: str) -> bool:
        d = self._d()
        name = key_filename(key)
        locked = self._locked(d, name, create=False)
        if locked is None:
            return False
        fd, data = locked
        try:
            rec, dirty = self._load(d, data, name, encode(key))
            now = time.time()
            was = _live(d, rec, now)
            if not (rec.held or dirty):
                return False
            rec.free()
            _ring(d, fd, rec, now)
        finally:
            d.checkin(name, fd)
        self._freed(d, name)
        return was

    @_translated("watch a lock")
    def _watch(self, key: str, waiter: Waiter | None) -> Busy | None:
        d = self._d()
        name = key_filename(key)
        reg = d.register(name, waiter, acquirer=False) if waiter is not None else None
        while True:
            rec = self._current(d, key) if reg is None else self._mark_waiting(d, name, key, reg)
            if rec is None:
                return None
            retry = d.retry_net(reg)
            if rec.expires_at:
                retry = min(retry, max(rec.expires_at - time.time(), 0.0005))
            busy = Busy(decode(rec.holder), retry)
            life_name = f"{_LIFE_DIR}/{rec.life.hex()}"
            if waiter is None or reg is None or rec.expires_at or life_name in reg.names:
                return busy
            d.register(life_name, waiter)  # then look again (see _try_acquire)

    @_translated("withdraw a waiter")
    def _withdraw(self, key: str, waiter: Waiter) -> Lease | None:
        d = self._d()
        reg = d.unregister(waiter)
        if reg is None:
            return None
        name = key_filename(key)
        if reg.acquirer:
            d.wake_next(name)  # it may have been woken in vain: the next local waiter tries
        others = name in d.waiters
        if others and not reg.reserved:
            return None
        # Give up our reservation, so the next waiter need not wait for it to go stale, and
        # our bell if no other waiter of this process waits, so no release rings in vain.
        locked = self._locked(d, name, create=False)
        if locked is None:
            return None
        fd, data = locked
        try:
            rec, _dirty = self._load(d, data, name, encode(key))
            changed = False
            if rec.res_id == reg.ident:
                rec.unreserve()
                changed = True
            if not others and d.life_id is not None and rec.drop_bell(d.life_id):
                changed = True
            now = time.time()
            if changed and _live(d, rec, now):
                _write_all(fd, _encode_record(rec))
            elif changed:
                _ring(d, fd, rec, now)
        finally:
            d.checkin(name, fd)
        return None
