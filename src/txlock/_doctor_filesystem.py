"""``txlock doctor``'s checks of a local store's directory, shared by the file and SQLite
backends: the filesystem type, the directory's permissions, free space and inotify.

Both stores exclude with ``flock`` (records, life and owner files) and wake waiters with
inotify, and SQLite's WAL maps a shared-memory file: all three work only on a filesystem
local to this host.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

from txlock._doctor import FAIL, PASS, WARN, Check

__all__ = ["filesystem_checks", "filesystem_type", "nearest_existing"]

#: Free bytes / inodes below which writes are about to fail (fail) or soon may (warn).
FREE_BYTES_FAIL, FREE_BYTES_WARN = 1 << 20, 64 << 20
FREE_INODES_FAIL, FREE_INODES_WARN = 100, 10_000

#: Filesystems whose files are shared with other hosts (or a VM's host), by ``mountinfo`` type.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "ncp", "afs", "coda", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "orangefs", "pvfs2", "ocfs2", "gfs2", "davfs", "vboxsf", "9p", "virtiofs",
})


def nearest_existing(path: str) -> str:
    """``path``, or its closest ancestor that exists."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def filesystem_type(path: str) -> tuple[str, str] | None:
    """``(type, mount point)`` of the filesystem holding ``path`` (``/proc/self/mountinfo``,
    else GNU ``stat -f``); ``None`` when it cannot be told."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        lines = []
    best: tuple[str, str] | None = None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        mount = _unescape(parts[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) >= len(best[1])):  # later mounts hide earlier ones
            best = (rest.split()[0], mount)
    if best is not None:
        return best
    tool = shutil.which("stat")
    if tool is None:
        return None
    try:
        done = subprocess.run([tool, "-f", "-c", "%T", real], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    kind = done.stdout.strip()
    return (kind, "?") if done.returncode == 0 and kind else None


def _unescape(text: str) -> str:
    r"""Undo the octal escapes of ``/proc/self/mountinfo`` (``\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def _network_reason(kind: str, sqlite: bool) -> str | None:
    if kind.startswith("fuse"):
        why = (
            f"{kind} is a userspace filesystem: flock works only as far as it implements it (often not at all, or "
            "for this host only), and inotify sees only changes made through this host's kernel"
        )
    elif kind in NETWORK_FILESYSTEMS:
        why = (
            f"{kind} is shared with other hosts (or a VM's host): flock does not exclude across them (it is "
            "local to each host, or emulated with the server's byte-range locks, which behave differently), "
            "and inotify never sees a change made elsewhere"
        )
    else:
        return None
    if sqlite:
        why += "; and SQLite's WAL maps a shared-memory file (-shm) that must be on a local disk, or the " \
            "database can be corrupted"
    return why


def filesystem_checks(directory: str, *, store: str, sqlite: bool, poll: str) -> list[Check]:
    """The checks of the directory that holds (or will hold) a local store: ``store`` names
    it in messages, ``poll`` says how its waiters poll without inotify."""
    try:
        status, space = os.stat(directory), os.statvfs(directory)
    except OSError as exc:
        return [Check("filesystem", FAIL, f"cannot read {directory}: {exc}", "fix the path or its permissions")]
    return [_type_check(directory, store, sqlite), _permissions(directory, status), _free_space(directory, space),
            _inotify_check(directory, poll)]


def _type_check(directory: str, store: str, sqlite: bool) -> Check:
    found = filesystem_type(directory)
    if found is None:
        return Check(
            "filesystem", WARN, f"cannot tell the filesystem type of {directory} (no /proc/self/mountinfo, no stat)",
            f"make sure {store} is on a local disk (ext4, xfs, btrfs, tmpfs...), never NFS, SMB or FUSE",
        )
    kind, mount = found
    why = _network_reason(kind, sqlite)
    if why is not None:
        return Check(
            "filesystem", FAIL, f"{directory} is on {kind} (mounted at {mount}): {why}",
            f"put {store} on a local disk of one host; to share locks between hosts use redis:// or postgresql://",
        )
    return Check("filesystem", PASS, f"{directory} is on {kind} (mounted at {mount}), a local filesystem")


#: Mode bits that let other users break or forge locks: (bit, what it allows, what to do).
_LOOSE_MODES = (
    (0o002, "is writable by every user{sticky}: anyone can create, replace or delete lock files, breaking or "
     "forging locks", "use a directory of its own, mode 700 (one user) or 770 with a group for the users that "
     "share the locks"),
    (0o020, "is writable by its group: every member can break or forge locks",
     "fine when that group is exactly the users that share the locks; otherwise chmod g-w (or 700)"),
)


def _permissions(directory: str, status: os.stat_result) -> Check:
    mode = stat.S_IMODE(status.st_mode)
    where = f"{directory} (mode {mode:o}, owner uid {status.st_uid}; this process runs as uid {os.geteuid()})"
    if not os.access(directory, os.W_OK | os.X_OK):
        return Check(
            "permissions", FAIL, f"{where} is not writable by this process: every acquire fails",
            "run as the directory's owner or a member of its group, or chmod/chown it (e.g. chmod 700 for one user)",
        )
    sticky = " (sticky: others cannot delete your files, but can create files txlock will use)" \
        if mode & stat.S_ISVTX else ""
    for bit, allows, advice in _LOOSE_MODES:
        if mode & bit:
            return Check("permissions", WARN, f"{where} {allows.format(sticky=sticky)}", advice)
    return Check("permissions", PASS, f"{where}: writable by its owner only")


def _free_space(directory: str, space: os.statvfs_result) -> Check:
    free = space.f_bavail * space.f_frsize
    inodes = space.f_favail if space.f_files else None  # some filesystems have no inode limit (btrfs: 0)
    detail = f"{free / (1 << 20):.0f} MiB free" + ("" if inodes is None else f", {inodes} inodes free")
    limits = ((FAIL, FREE_BYTES_FAIL, FREE_INODES_FAIL, "writes of lock records are about to fail (ENOSPC)"),
              (WARN, FREE_BYTES_WARN, FREE_INODES_WARN, "a full disk makes every acquire fail"))
    for status, low_bytes, low_inodes, meaning in limits:
        if free < low_bytes or (inodes is not None and inodes < low_inodes):
            return Check("free-space", status, f"{directory}: {detail}: {meaning}",
                         "free space on that filesystem or move the store")
    return Check("free-space", PASS, f"{directory}: {detail}")


def _inotify_check(directory: str, poll: str) -> Check:
    from txlock import _inotify

    watcher = _inotify.get()
    if watcher is None:
        return Check(
            "inotify", WARN, "inotify is not available (not Linux, or this user's inotify instances are used up: "
            f"fs.inotify.max_user_instances); waiters fall back to polling ({poll})",
            "raise fs.inotify.max_user_instances (sysctl) where it is the limit; polling works, but adds latency "
            "and CPU while waiting",
        )
    try:
        watch = watcher.watch(directory, _inotify.IN_ATTRIB | _inotify.IN_ONLYDIR, _ignore)
    except OSError as exc:
        return Check(
            "inotify", WARN, f"cannot watch {directory} with inotify ({exc}); waiters fall back to polling ({poll})",
            "raise fs.inotify.max_user_watches (sysctl) if that is the limit",
        )
    watcher.unwatch(watch)
    return Check("inotify", PASS, f"inotify watches {directory}: waiters are woken at once")


def _ignore(mask: int, name: bytes) -> None:
    """The handler of doctor's probe watch (removed at once)."""
