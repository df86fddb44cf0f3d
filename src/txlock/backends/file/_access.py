"""Reading and writing records: under the exclusive ``flock`` of their file, or without
taking part in any exclusion (a peek); the ring after a release; records as answers."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from txlock._errors import CorruptRecord
from txlock._observe import lazy_logger
from txlock._types import Lease, LockInfo
from txlock._validate import decode, encode
from txlock.backends.file._descriptors import (
    READ_ONLY,
    READ_WRITE,
    READ_WRITE_CREATE,
    close,
    open_at,
    read_all,
    write_all,
)
from txlock.backends.file._directory import DirectoryState
from txlock.backends.file._record import RESERVATION_STALE, Record, decode_record, encode_record, key_filename
from txlock.backends.file._wakeups import Registration

__all__ = [
    "RecordUnderLock",
    "current",
    "info",
    "lease",
    "load",
    "lock_record",
    "mark_waiting",
    "peek",
    "ring_and_write",
]

log = lazy_logger("txlock.file")  # logging is imported when first used

# The calls of the hot path, looked up once.
_flock, _LOCK_EX = fcntl.flock, fcntl.LOCK_EX
_fstat, _pread = os.fstat, os.pread


def lock_record(state: DirectoryState, directory: str, name: str, create: bool) -> tuple[int, bytes] | None:
    """Take ``name``'s exclusive flock and read it: ``(descriptor, bytes)``, to be given
    back with ``state.checkin``; ``None`` if absent and not ``create``. A descriptor kept
    from an earlier call is used when there is one (no open, no close)."""
    fd = state.fds.pop(name, -1)
    while True:
        if fd < 0:
            fd = _open_record(state, directory, name, create)
            if fd < 0:
                return None
        try:
            _flock(fd, _LOCK_EX)
            # Removed (by a collector, under its flock) or replaced (by anyone) since we
            # opened it: a kept descriptor must never write a record nobody else reads.
            if _fstat(fd).st_nlink:
                data = _pread(fd, 4096, 0)
                return fd, (data if len(data) < 4096 else read_all(fd))
        except BaseException:
            close(fd)
            raise
        close(fd)  # removed or replaced: open what the name holds now
        fd = -1


def _open_record(state: DirectoryState, directory: str, name: str, create: bool) -> int:
    """A new descriptor of ``name`` (checked to be a regular file), or -1 if absent."""
    try:
        fd = open_at(name, READ_WRITE_CREATE if create else READ_WRITE, state.fd, state.file_mode)
    except FileNotFoundError:
        if create:
            raise
        return -1
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP):
            raise _foreign(directory, name, exc) from exc
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _foreign(directory, name, None)
        if status.st_size == 0 and status.st_uid == os.getuid() and stat.S_IMODE(status.st_mode) != state.file_mode:
            os.fchmod(fd, state.file_mode)  # a new file: the umask must not change its mode
    except BaseException:
        close(fd)
        raise
    return fd


def _foreign(directory: str, name: str, exc: OSError | None) -> CorruptRecord:
    path = os.path.join(directory, name)
    what = "a symbolic link or special file" if exc is None or exc.errno != errno.EISDIR else "a directory"
    return CorruptRecord(
        f"{path} is {what}, not a txlock record; txlock never follows or writes through it. "
        "Remove it (nothing of txlock's is lost) and check who can write to the lock directory."
    )


def load(state: DirectoryState, directory: str, data: bytes, name: str, key: bytes) -> tuple[Record, bool]:
    """The record read under the exclusive lock; ``True`` when it must be rewritten."""
    if not data:
        return Record(state.read_high_water(), key), False  # a new file
    record, counter = decode_record(data)
    if record is not None and record.key == key:
        return record, False
    base = max(counter or 0, state.read_high_water())
    log.warning(
        "lock file %s holds no whole record of this key (a writer died mid-write or a foreign "
        "file); treating it as a broken hold, token counter continues from %d",
        os.path.join(directory, name),
        base,
    )
    return Record(base, key), True


class RecordUnderLock:
    """``with RecordUnderLock(state, directory, name, key) as locked:`` the record of ``key``
    (file ``name``) read under the file's exclusive flock, or ``None`` when there is no
    file; at the end the descriptor is unlocked and kept (``state.checkin``)."""

    __slots__ = ("directory", "dirty", "fd", "key", "name", "record", "state")

    def __init__(self, state: DirectoryState, directory: str, name: str, key: str) -> None:
        self.state, self.directory, self.name, self.key = state, directory, name, key
        self.fd = -1

    def __enter__(self) -> RecordUnderLock | None:
        locked = lock_record(self.state, self.directory, self.name, create=False)
        if locked is None:
            return None
        self.fd, data = locked
        try:
            self.record, self.dirty = load(self.state, self.directory, data, self.name, encode(self.key))
        except BaseException:
            self.state.checkin(self.name, self.fd)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            self.state.checkin(self.name, self.fd)

    def write(self) -> None:
        """Write the record back (still under the lock)."""
        write_all(self.fd, encode_record(self.record))


def peek(state: DirectoryState, name: str, block: bool = True) -> Record | None:
    """Read a record without taking part in any exclusion: ``None`` when absent or broken."""
    try:
        fd = open_at(name, READ_ONLY, state.fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):
            return None  # a foreign file is no hold
        raise
    try:
        try:
            data = read_all(fd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ESPIPE, errno.EINVAL):
                return None
            raise
        if not data:
            return None
        record, _ = decode_record(data)
        if record is None:
            # Mid-write: read it again once the writer is done.
            fcntl.flock(fd, fcntl.LOCK_SH if block else fcntl.LOCK_SH | fcntl.LOCK_NB)
            record, _ = decode_record(read_all(fd))
        return record
    finally:
        close(fd)


def current(state: DirectoryState, key: str) -> Record | None:
    """The live hold of ``key``, read without locking; ``None`` when the key is free."""
    record = peek(state, key_filename(key))
    if record is None or record.key != encode(key) or not state.live(record, time.time()):
        return None
    return record


def mark_waiting(
    state: DirectoryState, directory: str, name: str, key: str, entry: Registration
) -> Record | None:
    """The live hold of ``key``, its record marked (under the lock) so that its release
    rings this process; ``None`` when the key is free."""
    with RecordUnderLock(state, directory, name, key) as locked:
        if locked is None:
            return None
        record = locked.record
        now = time.time()
        if not state.live(record, now):
            return None
        if record.add_bell(state.lives.own_id(), entry.since, now):
            locked.write()
        return record


def ring_and_write(state: DirectoryState, fd: int, record: Record, now: float) -> None:
    """Write ``record`` (under the exclusive lock) after a release, then ring the process of
    its oldest waiter: change the times of that process's life file, which inotify reports
    (``IN_ATTRIB``) to that process alone, which wakes one local waiter. Other writes
    (grants, renewals, reservations) ring no one; nor does a release while a young
    reservation stands (``GRACE``): the reserver wakes at its end by itself. Waiters of this
    process are woken directly (``DirectoryState.freed_here``)."""
    own = state.lives.own
    target = None
    if record.bells and not record.in_grace(now):
        while record.bells:
            life, _since, seen, quiet = record.bells[0]
            if abs(now - seen) >= RESERVATION_STALE:  # (also from a clock far ahead)
                del record.bells[0]
                continue
            if life != own and now >= quiet:
                target = life
            break
    while True:
        write_all(fd, encode_record(record))
        if target is None or state.lives.touch(target):
            return
        record.drop_bell(target)  # that process is gone: ring the next one
        target = record.bells[0][0] if record.bells and record.bells[0][0] != own else None


_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__


def lease(key: str, holder: str, record: Record) -> Lease:
    return _new_tuple(Lease, (key, holder, record.counter, record.expires_at or None, record.ttl or None))


def info(record: Record) -> LockInfo:
    return LockInfo(
        decode(record.key), decode(record.holder), record.counter, record.acquired_at, record.expires_at or None, None
    )
