"""Linux inotify, shared by the local backends: one descriptor and one reader thread per process.

The file and SQLite backends wake their waiters when another process changes a file (a
lock record, a signal file, the life file of a process that died). Each registers the
directories it cares about with :func:`watch` and gets its handler called, on the single
reader thread, with the event mask and the file name. Where inotify is missing (not Linux,
or out of inotify instances) :func:`get` returns ``None`` and the backends fall back to a
short adaptive poll.

After ``fork()`` the child starts without a watcher (the parent's reader thread does not
exist there); the next :func:`get` makes a new one.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable

from txlock._observe import lazy_logger

__all__ = [
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_IGNORED",
    "IN_MODIFY",
    "IN_MOVED_TO",
    "IN_ONLYDIR",
    "IN_Q_OVERFLOW",
    "Handler",
    "Inotify",
    "get",
]

log = lazy_logger("txlock.inotify")  # logging is imported when first used

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000  # events were lost: every handler is called with this mask
IN_IGNORED = 0x8000  # the watched directory went away
IN_ONLYDIR = 0x01000000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")

#: ``handler(mask, name)``: ``name`` is the file's name inside the watched directory
#: (``b""`` for events on the directory itself and for ``IN_Q_OVERFLOW``).
Handler = Callable[[int, bytes], None]


class Inotify:
    """One inotify descriptor and the daemon thread that reads it."""

    def __init__(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self._errno = ctypes.get_errno
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(_IN_CLOEXEC)
        if fd < 0:
            err = self._errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd
        self._handlers: dict[int, Handler] = {}
        self._mutex = threading.Lock()
        #: Numbers the reads of the descriptor: handlers may coalesce the events of one read.
        self.batch = 0
        threading.Thread(target=self._run, name="txlock-inotify", daemon=True).start()

    def watch(self, path: str | bytes, mask: int, handler: Handler) -> int:
        """Call ``handler`` for the events in ``mask`` on the directory ``path``; return the
        watch descriptor. Raises ``OSError`` if the directory cannot be watched."""
        with self._mutex:
            wd = int(self._add(self.fd, os.fsencode(path), mask))
            if wd < 0:
                err = self._errno()
                raise OSError(err, os.strerror(err), path)
            self._handlers[wd] = handler
            return wd

    def unwatch(self, wd: int) -> None:
        """Stop a watch made by :meth:`watch`."""
        with self._mutex:
            if self._handlers.pop(wd, None) is not None:
                self._rm(self.fd, wd)

    def _run(self) -> None:
        fd = self.fd
        while True:
            try:
                buf = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                return  # closed (a forked child's copy, or interpreter exit)
            self.batch += 1
            try:
                self._dispatch(buf)
            except Exception:  # the reader serves every backend: it must outlive a bad handler
                log.exception("txlock inotify reader: a handler failed")

    def _dispatch(self, buf: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            name = buf[offset + _EVENT.size : offset + _EVENT.size + length].split(b"\0", 1)[0]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                for every in list(self._handlers.values()):
                    every(IN_Q_OVERFLOW, b"")
                continue
            handler = self._handlers.get(wd)
            if handler is None:
                continue
            if mask & IN_IGNORED:
                with self._mutex:
                    self._handlers.pop(wd, None)
            handler(mask, name)


_instance: Inotify | None = None
_failed = False
_mutex = threading.Lock()


def get() -> Inotify | None:
    """Return the process-wide watcher, made on first use; ``None`` where inotify is unavailable."""
    global _instance, _failed
    if _instance is not None or _failed:
        return _instance
    with _mutex:
        if _instance is None and not _failed:
            try:
                _instance = Inotify()
            except (OSError, AttributeError) as exc:  # not Linux, or out of inotify instances
                log.debug("inotify unavailable (%s); lock waiters poll instead", exc)
                _failed = True
    return _instance


def _after_fork_in_child() -> None:
    global _instance, _failed, _mutex
    if _instance is not None:
        with contextlib.suppress(OSError):
            os.close(_instance.fd)
    _instance, _failed, _mutex = None, False, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
