"""Proof of life: one file per process, ``flock``-ed by it for as long as it lives.

This is how the local stores (file, SQLite) keep the promise of DESIGN.md section 3 for a
hold taken without ``hold_timeout``: *the hold lasts until it is released or until the
process that took it dies, and then it is free at once*, with no PID (PIDs are reused), no
heartbeat and no clock involved.

The mechanism:

* **One owner file per process and directory.** On first need, a process picks a random
  *owner id*, creates ``<directory>/<name of the id>``, and takes an exclusive ``flock`` on
  it, which it never lets go of. A hold bound to the process stores that id (in a record, in
  a table row). The file is created under a temporary name, locked, then renamed into
  place: a file found under an owner name is always locked by its owner from the moment it
  appears, so nobody can mistake a process that is still starting for a dead one.
* **Anyone can ask whether an owner lives** (:meth:`LifeFiles.alive`): open its file and
  try a non-blocking shared ``flock``. It fails while the owner's exclusive lock stands. The
  kernel drops that lock the instant the last descriptor of the owner's open file goes
  away, which happens when the process exits or is killed (even by ``SIGKILL``): from then
  on the probe succeeds, the owner is dead, and every hold that names it reads as free. A
  missing file is a dead owner too: an owner's file is removed only once it is dead, or by
  the owner itself once no hold names it any more (:meth:`LifeFiles.release`).
* **Death is final.** Ids are random (128 or 63 bits), never reused, and a published file
  is never locked again by anyone else, so an owner seen dead stays dead: the prober removes
  its file at once (and remembers the id), and :meth:`LifeFiles.sweep` removes the files
  that dead owners left behind, a few at a time, when a process makes its own.
* **A child made by ``fork`` is another owner.** It inherits a descriptor of its parent's
  file, and with it the parent's lock (a ``flock`` belongs to the open file, which fork
  shares): if the child kept it, the parent's holds would outlive the parent. So the child
  closes that descriptor at once (closing, never unlocking: the parent still holds it),
  forgets the parent's id, and makes an id and file of its own if it needs one. The file is
  created under a lock that the fork hooks take, so a fork from another thread can never
  catch it half made; probe descriptors are closed in the child the same way.

What it does not promise: ``flock`` is local to one host (not over NFS); a process that is
alive but stuck keeps its holds (that is what ``hold_timeout`` is for); and a permission
problem on the directory makes a probe *unsure*, which is either reported or, where a store
must answer inside a query, taken as "alive": an unsure probe never frees a hold.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, Literal, TypeVar

from txlock._observe import lazy_logger

__all__ = ["BYTES_128", "INT_63", "IdFormat", "LifeFiles"]

log = lazy_logger("txlock.liveness")  # logging is imported when first used

OwnerId = TypeVar("OwnerId", bound=Hashable)


class IdFormat(Generic[OwnerId]):
    """How a store spells owner ids: how to make one, its file name, and back.

    Args:
        new: a fresh random id.
        name: the file name of an id.
        parse: the id a file name names; ``None`` for any other name.
        none: the id that names no process (a hold bound to no process): never alive.
    """

    __slots__ = ("name", "new", "none", "parse")

    def __init__(
        self,
        new: Callable[[], OwnerId],
        name: Callable[[OwnerId], str],
        parse: Callable[[str], OwnerId | None],
        none: OwnerId,
    ) -> None:
        self.new, self.name, self.parse, self.none = new, name, parse, none


_HEX_32 = re.compile(r"[0-9a-f]{32}")
_OWNER_63 = re.compile(r"o-[0-9a-f]{16}")


def _parse_bytes_128(name: str) -> bytes | None:
    return bytes.fromhex(name) if _HEX_32.fullmatch(name) else None


def _parse_int_63(name: str) -> int | None:
    return (int(name[2:], 16) or None) if _OWNER_63.fullmatch(name) else None


#: 16 random bytes, named by their 32 hex digits (the file store's records hold the bytes).
BYTES_128: IdFormat[bytes] = IdFormat(lambda: os.urandom(16), bytes.hex, _parse_bytes_128, bytes(16))
#: A random positive 63-bit int (fits an SQLite INTEGER), named ``o-`` + 16 hex digits.
INT_63: IdFormat[int] = IdFormat(
    lambda: (int.from_bytes(os.urandom(8), "big") >> 1) or 1, lambda owner: f"o-{owner:016x}", _parse_int_63, 0
)

#: How many dead owners' ids a process remembers (then it forgets them all and re-probes).
_DEAD_REMEMBERED = 100_000

_PROBE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Taken around every descriptor this module opens or closes and held across fork, so a
# child never inherits one that nobody will close (see the module docstring).
_fork_lock = threading.Lock()
_open_fds: set[int] = set()
_instances: weakref.WeakSet[LifeFiles[Hashable]] = weakref.WeakSet()


class LifeFiles(Generic[OwnerId]):
    """The owner files of one directory, seen from this process.

    A store keeps one per directory and process: it binds a hold to ``own_id()`` (made on
    first use), asks ``alive(owner)`` of the id a hold names (a dead owner's file goes on
    the way), and gives its own id up with ``release()`` once no hold names it. Thread-safe;
    in a child made by ``fork``, ``own`` is ``None`` again (the child makes its own).

    Args:
        path: the directory (for messages; and the files' parent unless ``dir_fd`` is given).
        ids: how owner ids are made and named (:data:`BYTES_128`, :data:`INT_63`).
        dir_fd: an open descriptor of the directory (kept open by the caller): names are
            then resolved relative to it, so the directory cannot be swapped underneath.
        mode: the mode of this process's file.
        create_directory: make ``path`` (and its parents) before making this process's file.
        sweep_limit: how many files of dead owners :meth:`own_id` sweeps after making this
            process's file (``None``: all).
        on_error: what an unsure probe (an error other than "no such file", e.g. permission
            denied) does: ``"raise"`` the ``OSError``, or log it and answer ``"alive"``.
    """

    def __init__(
        self,
        path: str,
        ids: IdFormat[OwnerId],
        *,
        dir_fd: int | None = None,
        mode: int = 0o600,
        create_directory: bool = False,
        sweep_limit: int | None = 64,
        on_error: Literal["raise", "alive"] = "raise",
    ) -> None:
        self.path = path
        self.ids = ids
        self.dir_fd = dir_fd
        self.mode = mode
        self.create_directory = create_directory
        self.sweep_limit = sweep_limit
        self.on_error = on_error
        self.own: OwnerId | None = None  # this process's id here, once made
        self._own_fd = -1
        self._mutex = threading.Lock()
        self._dead: set[OwnerId] = set()
        _instances.add(self)  # type: ignore[arg-type]

    def _where(self, name: str) -> str:
        return name if self.dir_fd is not None else os.path.join(self.path, name)

    def file_name(self, owner: OwnerId) -> str:
        """The name of ``owner``'s file in the directory."""
        return self.ids.name(owner)

    def file_path(self, owner: OwnerId) -> str:
        """The path of ``owner``'s file."""
        return os.path.join(self.path, self.ids.name(owner))

    # ------------------------------------------------------------ this process

    def own_id(self) -> OwnerId:
        """The id of this process here; its file is made (and locked) on first use, then the
        files of up to ``sweep_limit`` dead owners are swept. Raises ``OSError``."""
        own = self.own
        if own is not None:
            return own
        with self._mutex:
            own = self.own
            made = own is None
            if own is None:
                own = self._make()
        if made and self.sweep_limit != 0:
            self.sweep()
        return own

    def _make(self) -> OwnerId:
        if self.create_directory:
            os.makedirs(self.path, exist_ok=True)
        own = self.ids.new()
        name = self.ids.name(own)
        temporary = self._where(f"tmp-{name}")
        with _fork_lock:
            fd = os.open(temporary, _CREATE, self.mode, dir_fd=self.dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # never blocks: nobody else knows the name
                os.write(fd, f"{os.getpid()}\n".encode())
                # Published only once locked, so no prober can take it for dead.
                os.rename(temporary, self._where(name), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=self.dir_fd)
                raise
            self._own_fd, self.own = fd, own
        return own

    def release(self, keep: Callable[[OwnerId], bool] | None = None) -> bool:
        """Give up this process's id here: remove its file and let go of its lock, unless
        ``keep(id)`` (asked under this object's mutex) says a hold still names it. Only for
        an id no hold names any more: from now on it reads as dead. Whether it was given up
        (``True`` too when there was none)."""
        with self._mutex:
            own = self.own
            if own is None:
                return True
            if keep is not None and keep(own):
                return False
            with _fork_lock:
                with contextlib.suppress(OSError):
                    os.unlink(self._where(self.ids.name(own)), dir_fd=self.dir_fd)
                with contextlib.suppress(OSError):
                    os.close(self._own_fd)
                self.own, self._own_fd = None, -1
            return True

    def _after_fork_in_child(self) -> None:
        self._mutex = threading.Lock()
        if self._own_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._own_fd)  # close, never unlock: the parent still holds it
        self.own, self._own_fd = None, -1

    # ------------------------------------------------------------ other processes

    def alive(self, owner: OwnerId | None) -> bool:
        """Whether the process of ``owner`` still lives (holds its file's ``flock``). A dead
        owner's file is removed on the way. See ``on_error`` for a probe that cannot tell."""
        if owner == self.own:
            return owner is not None
        if owner is None or owner == self.ids.none:
            return False
        if owner in self._dead:
            return False
        where = self._where(self.ids.name(owner))
        try:
            with _fork_lock:
                fd = os.open(where, _PROBE, dir_fd=self.dir_fd)
                _open_fds.add(fd)
        except FileNotFoundError:
            return self._died(owner)  # removed only once dead
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False  # a symbolic link: nobody's owner file
            return self._unsure(where, exc)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            return self._unsure(where, exc)
        else:
            with contextlib.suppress(OSError):
                os.unlink(where, dir_fd=self.dir_fd)
            return self._died(owner)
        finally:
            with _fork_lock:
                _open_fds.discard(fd)
                os.close(fd)

    def _died(self, owner: OwnerId) -> bool:
        if len(self._dead) >= _DEAD_REMEMBERED:
            self._dead.clear()
        self._dead.add(owner)
        return False

    def _unsure(self, where: str, exc: OSError) -> bool:
        if self.on_error == "raise":
            raise exc
        log.warning("cannot check the owner file %s (%s); treating its holds as alive", where, exc)
        return True

    def bury(self, owner: OwnerId) -> None:
        """Remove the file of ``owner``, known dead (never this process's own)."""
        if owner not in (self.ids.none, self.own):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._where(self.ids.name(owner)), dir_fd=self.dir_fd)

    def sweep(self) -> None:
        """Remove the files of up to ``sweep_limit`` dead owners (of all, if ``None``)."""
        try:
            with os.scandir(self.dir_fd if self.dir_fd is not None else self.path) as entries:
                names = [entry.name for entry in entries]
        except OSError:
            return
        probed = 0
        for name in names:
            owner = self.ids.parse(name)
            if owner is None or owner == self.own:
                continue
            if self.sweep_limit is not None and probed >= self.sweep_limit:
                return
            probed += 1
            with contextlib.suppress(OSError):
                self.alive(owner)  # removes the file of a dead owner

    def touch(self, owner: OwnerId) -> bool:
        """Change the times of ``owner``'s file: a signal that whoever watches the directory
        with inotify sees as ``IN_ATTRIB`` on that name. ``False`` if the file is gone (its
        owner is dead)."""
        try:
            os.utime(self._where(self.ids.name(owner)), dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True


def _before_fork() -> None:
    _fork_lock.acquire()


def _after_fork_in_parent() -> None:
    _fork_lock.release()


def _after_fork_in_child() -> None:
    global _fork_lock, _open_fds
    for fd in _open_fds:
        with contextlib.suppress(OSError):
            os.close(fd)  # probes of other threads: close, never unlock
    _open_fds = set()
    _fork_lock = threading.Lock()
    for lives in list(_instances):
        lives._after_fork_in_child()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
