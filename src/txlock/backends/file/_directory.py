"""What one process keeps for one lock directory, shared by every manager on it.

:class:`DirectoryState` holds the directory's descriptors, the cache of idle record
descriptors, this process's life file (:class:`txlock._liveness.LifeFiles`), the local
waiters and their inotify watches, the high-water mark of removed records' tokens and the
collector of freed record files. :func:`attach` and :func:`detach` count the managers that
use it; the last one out retires it, unless a hold of the process is bound to its life.
In a child made by ``fork`` it resets what belongs to the parent (see ``after_fork``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
import time

from txlock import _scheduler
from txlock._errors import BackendError, BackendUnavailable, ConfigurationError
from txlock._hostclock import BOOT_ID, host_now
from txlock._liveness import BYTES_128, LifeFiles
from txlock._observe import lazy_logger
from txlock._per_process import PerProcess
from txlock.backends.file import _descriptors
from txlock.backends.file._descriptors import close
from txlock.backends.file._record import (
    HIGH_WATER_SIZE,
    NO_RESERVATION,
    RESERVATION_STALE,
    Record,
    decode_high_water,
    decode_record,
    encode_high_water,
)
from txlock.backends.file._wakeups import LIFE_DIR, Wakeups

__all__ = ["FD_CACHE", "GC_INTERVAL", "DirectoryState", "attach", "detach", "detach_pending", "translate"]

log = lazy_logger("txlock.file")  # logging is imported when first used

#: How often this process removes the files of keys it freed.
GC_INTERVAL = 5.0
#: Open record descriptors kept per process and directory, for the keys used last (so an
#: acquire+release of a hot key costs no open/close; bounded, so held keys cost none).
FD_CACHE = 8
_TOKENS = "tokens"

_flock, _LOCK_UN = fcntl.flock, fcntl.LOCK_UN


class DirectoryState:
    """Everything this process keeps for one lock directory (shared by every manager on it)."""

    def __init__(self, path: str, fd: int, life_fd: int, mode: int, ident: tuple[int, int]) -> None:
        self.path = path
        self.fd = fd
        self.life_dir = life_fd
        self.file_mode = mode & 0o666
        self.ident = ident
        self.mutex = threading.Lock()
        # One collection at a time: close() must not retire the directory's descriptors
        # under a collection the scheduler thread is running (its files would stay).
        self.collecting = threading.Lock()
        self.closed = False  # its descriptors are closed (set under ``collecting``)
        self.refs = 1  # managers using it (under _attach_mutex)
        self.lives = LifeFiles(os.path.join(path, LIFE_DIR), BYTES_128, dir_fd=life_fd, mode=self.file_mode)
        self.wakeups = Wakeups(path, fd, self.lives)
        self.freed: set[str] = set()
        self.gc_job: _scheduler.Job | None = None
        self.bound: set[str] = set()  # keys whose hold this process bound to its life
        self.fds: dict[str, int] = {}  # idle record descriptors (unlocked), least recent first
        self.retired = False

    # ------------------------------------------------------------ holds

    def live(self, record: Record, now: float) -> bool:
        """Whether the hold in ``record`` is in force: not expired, and its process alive.
        ``now`` is the wall clock, for records without a host-clock expiry of this boot."""
        if not record.held:
            return False
        if record.expires_at:
            if record.boot == BOOT_ID:
                return host_now() < record.host_expires
            return now < record.expires_at
        return self.lives.alive(record.life)

    def reserved(self, record: Record, now: float) -> bool:
        """Whether ``record`` carries a reservation still in force."""
        return (
            record.reservation != NO_RESERVATION
            # (seen "in the future": a wall clock ahead of ours, or stepped back; void too)
            and abs(now - record.reservation_seen) < RESERVATION_STALE
            and self.lives.alive(record.reservation_life)
        )

    # ------------------------------------------------------------ record descriptors

    def checkin(self, name: str, fd: int) -> None:
        """Unlock a record descriptor taken with ``lock_record`` and keep it for the next
        call on ``name`` (the least recently used beyond ``FD_CACHE`` is closed)."""
        try:
            _flock(fd, _LOCK_UN)
        except BaseException:
            close(fd)
            raise
        fds = self.fds
        if fds.setdefault(name, fd) != fd:  # atomic: another thread kept one meanwhile
            close(fd)
        elif len(fds) > FD_CACHE or self.retired:
            with self.mutex:
                while len(fds) > (0 if self.retired else FD_CACHE):
                    try:  # other threads take and give back descriptors without the mutex
                        old = fds.pop(next(iter(fds)))
                    except (RuntimeError, KeyError, StopIteration):
                        continue
                    close(old)

    def drop_fds(self) -> None:
        with self.mutex:
            fds = list(self.fds.values())
            self.fds.clear()  # the same dict: a checkin racing this sees ``retired`` and closes
        for fd in fds:
            with contextlib.suppress(OSError):
                close(fd)

    # ------------------------------------------------------------ tokens high-water mark

    def read_high_water(self) -> int:
        try:
            fd = _descriptors.open_at(_TOKENS, _descriptors.READ_ONLY, self.fd)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            data = os.pread(fd, HIGH_WATER_SIZE, 0)
        finally:
            close(fd)
        value = decode_high_water(data)
        if value is None and data:
            log.warning("%s is damaged; fencing tokens of new record files restart at 1",
                        os.path.join(self.path, _TOKENS))
        return value or 0

    def raise_high_water(self, counter: int) -> None:
        fd = _descriptors.open_at(_TOKENS, _descriptors.READ_WRITE_CREATE, self.fd, self.file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = decode_high_water(os.pread(fd, HIGH_WATER_SIZE, 0)) or 0
            if counter > current:
                _descriptors.write_all(fd, encode_high_water(counter))
        finally:
            close(fd)

    # ------------------------------------------------------------ garbage collection

    def hold_bound(self, name: str, ttl: float | None) -> None:
        """Note whether the hold of ``name`` is bound to this process's life."""
        if ttl is None:  # set operations are atomic: no mutex needed
            self.bound.add(name)
        else:
            self.bound.discard(name)

    def freed_here(self, name: str) -> None:
        """The key of record file ``name`` was freed here: collect its file later, wake a local waiter now."""
        self.bound.discard(name)
        if name not in self.freed:  # (a stale answer only means the collector has it already)
            with self.mutex:
                self.freed.add(name)
                if self.gc_job is None and not self.retired:
                    self.gc_job = _scheduler.schedule(self.gc, GC_INTERVAL, name=f"gc {self.path}")
        if name in self.wakeups.waiters.channels:  # a waiter of this process, at once (others are rung)
            self.wakeups.wake_next(name)

    def gc(self) -> bool:
        """Remove the record files of keys this process freed that are still free."""
        with self.collecting:
            with self.mutex:
                names, self.freed = self.freed, set()
                if not names or self.closed:
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
            fd = _descriptors.open_at(name, _descriptors.READ_WRITE, self.fd)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # in use right now: it is not idle
            status = os.fstat(fd)
            if status.st_nlink == 0 or not stat.S_ISREG(status.st_mode):
                return
            record, _counter = decode_record(_descriptors.read_all(fd))
            if record is None:
                return  # empty or broken: left for the next writer to repair
            now = time.time()
            if record.held and self.live(record, now):
                return
            if self.reserved(record, now):
                return  # a waiter is about to take it
            if record.counter:
                self.raise_high_water(record.counter)  # before the unlink: a new file starts above it
            os.unlink(name, dir_fd=self.fd)
        finally:
            close(fd)

    # ------------------------------------------------------------ life cycle

    def retire(self) -> None:
        """The last manager on this directory closed: drop what the process keeps for it."""
        with contextlib.suppress(OSError):
            self.gc()
        with _attach_mutex:
            if self.refs > 0:
                return
            with self.mutex:
                if self.bound:  # holds bound to this process: its life must go on
                    return
                self.retired = True
                if self.gc_job is not None:
                    self.gc_job.cancel()
                    self.gc_job = None
            _states.pop(self.ident)
        with self.collecting:  # a collection the scheduler started finishes first
            self.closed = True
            self.wakeups.stop()
            self.drop_fds()
            self.lives.release()
            os.close(self.life_dir)
            os.close(self.fd)

    def after_fork(self) -> bool:
        """In a forked child: the parent's waiters, watches and holds are not ours (the
        life file is reset by ``LifeFiles``, the record descriptors by ``_descriptors``)."""
        self.mutex = threading.Lock()
        self.collecting = threading.Lock()
        self.wakeups.after_fork()
        self.freed = set()
        self.gc_job = None
        self.bound = set()
        self.fds = {}  # closed with every registered descriptor by the fork hook
        return True


#: The directories this process uses, by (device, inode).
_states: PerProcess[tuple[int, int], DirectoryState] = PerProcess(after_fork=DirectoryState.after_fork)
# Counts managers (``refs``) and retires atomically; replaced in a forked child.
_attach_mutex = threading.Lock()


def _after_fork_in_child() -> None:
    global _attach_mutex
    _attach_mutex = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def attach(path: str, mode: int, create: bool = False) -> DirectoryState:
    """The state of directory ``path`` in this process (created, with ``mode``, if missing;
    its parent too when ``create``)."""
    detach_pending()
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
        raise translate(exc, path, "open the lock directory") from exc
    try:
        try:
            os.mkdir(LIFE_DIR, mode, dir_fd=fd)
            created = True
        except FileExistsError:
            created = False
        life_fd = os.open(LIFE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        if created:
            os.fchmod(life_fd, mode)
        status = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise translate(exc, path, f"open {os.path.join(path, LIFE_DIR)}") from exc
    ident = (status.st_dev, status.st_ino)
    with _attach_mutex:
        # (a retired state has left the table, under this mutex)
        state = _states.get(ident, lambda: DirectoryState(path, fd, life_fd, mode, ident))
        if state.fd != fd:  # one made before, not ours
            state.refs += 1
            os.close(fd)
            os.close(life_fd)
        return state


# Managers collected without close() leave their share here: a finalizer may run inside any
# allocation, even one made under a lock of this package, so it only appends.
pending: list[DirectoryState] = []


def detach_pending() -> None:
    while pending:
        try:
            state = pending.pop()
        except IndexError:
            return
        detach(state)


def detach(state: DirectoryState) -> None:
    with _attach_mutex:
        state.refs -= 1
        last = state.refs <= 0
    if last:
        state.retire()


def translate(exc: OSError, path: str, doing: str) -> BackendError:
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
