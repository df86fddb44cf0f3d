"""Record descriptors, safe across ``fork``.

Every record descriptor the package opens is registered here while it is open, under a
lock the fork hooks take: a child forked by another thread closes them at once, so it can
never keep alive a ``flock`` that the parent thinks it released (a ``flock`` belongs to the
open file description, which fork shares).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from txlock.backends.file._record import record_length

__all__ = ["READ_ONLY", "READ_WRITE", "READ_WRITE_CREATE", "close", "open_at", "process_id", "read_all", "write_all"]

#: Records larger than this are not records (a foreign file).
MAX_RECORD = 1 << 24

READ_ONLY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
READ_WRITE = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
READ_WRITE_CREATE = READ_WRITE | os.O_CREAT

_fork_lock = threading.Lock()
_open: set[int] = set()
_pid = os.getpid()  # (os.getpid() is a system call; the fork hook refreshes this)


def process_id() -> int:
    """The id of this process (cached; refreshed in a forked child)."""
    return _pid


def open_at(name: str, flags: int, dir_fd: int, mode: int = 0o600) -> int:
    with _fork_lock:
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
        _open.add(fd)
    return fd


def close(fd: int) -> None:
    with _fork_lock:
        _open.discard(fd)
        os.close(fd)


def read_all(fd: int) -> bytes:
    data = os.pread(fd, 4096, 0)
    if len(data) == 4096:  # a long key or holder: the record may go on
        need = record_length(data)
        if 4096 < need <= MAX_RECORD:
            data += os.pread(fd, need - 4096, 4096)
    return data


_pwrite = os.pwrite


def write_all(fd: int, data: bytes) -> None:
    written = _pwrite(fd, data, 0)
    if written != len(data):  # only a full disk does this to a local file
        raise OSError(errno.ENOSPC, "short write of a lock record")


def _before_fork() -> None:
    _fork_lock.acquire()


def _after_fork_in_parent() -> None:
    _fork_lock.release()


def _after_fork_in_child() -> None:
    global _fork_lock, _open, _pid
    _pid = os.getpid()
    for fd in _open:
        with contextlib.suppress(OSError):
            os.close(fd)  # close, never unlock: the parent still holds what it holds
    _open = set()
    _fork_lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
