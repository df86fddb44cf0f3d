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

The package: ``manager.py`` (the manager and its primitives), ``_attempt.py`` (one acquire
attempt, in named steps), ``_access.py`` (reading and writing records under their flock,
the ring), ``_record.py`` (the record format, pure), ``_directory.py`` (the per-process
state of a directory: descriptors, life file, collector, fork reset), ``_wakeups.py`` (local
waiters, inotify), ``_descriptors.py`` (record descriptors closed in a forked child). Proof
of life is :mod:`txlock._liveness`.
"""

from txlock.backends.file._directory import FD_CACHE
from txlock.backends.file._record import key_filename
from txlock.backends.file.manager import FileSystemLockManager

__all__ = ["FD_CACHE", "FileSystemLockManager", "key_filename"]
