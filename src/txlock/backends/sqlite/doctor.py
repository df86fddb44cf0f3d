"""``txlock doctor``'s checks of a SQLite lock database (``sqlite://``), made before the
manager is built: building it would create a missing database file, and doctor changes
nothing."""

from __future__ import annotations

import os
import stat

from txlock._doctor import FAIL, PASS, WARN, Check, Findings
from txlock._doctor_filesystem import filesystem_checks, nearest_existing
from txlock._options import local_path

__all__ = ["preflight"]

#: How waiters of this store wait without inotify (docs/sqlite.md).
POLL = "an adaptive poll capped at 25 ms"


def database_path(url: str) -> str:
    """The database file ``url`` names, as :class:`SQLiteLockManager` reads it."""
    text = local_path(url.split("?", 1)[0], "SQLite", "sqlite:///absolute/path/to/locks.db")
    # "sqlite:////abs" (SQLAlchemy's spelling) yields "//abs": one leading slash is meant.
    return os.path.abspath("/" + text.lstrip("/") if text.startswith("//") else text)


def preflight(url: str) -> Findings:
    """The filesystem checks of the directory of the database ``url`` names, and of the file;
    ``blocker`` when the file does not exist yet."""
    path = database_path(url)
    directory = os.path.dirname(path)
    store = f"the lock database {path}"
    if not os.path.isdir(directory):
        checks = filesystem_checks(nearest_existing(directory), store=store, sqlite=True, poll=POLL)
        missing = Check("store", FAIL, f"the directory {directory} of {path} does not exist: txlock refuses it",
                        "create the directory or fix the path")
        return Findings([missing, *checks], blocker=f"{directory} does not exist")
    checks = filesystem_checks(directory, store=store, sqlite=True, poll=POLL)
    if not os.path.lexists(path):
        first = Check("store", PASS, f"{path} does not exist yet: txlock creates it (with {path}-wal, -shm and "
                      "-txlock/) on first use")
        return Findings([first, *checks], blocker=f"the database {path} does not exist yet")
    return Findings([_database_file(path), *checks])


def _database_file(path: str) -> Check:
    status = os.lstat(path)
    if not stat.S_ISREG(status.st_mode):
        return Check("store", FAIL, f"{path} is not a regular file", "name a regular file in the URL")
    if not os.access(path, os.R_OK | os.W_OK):
        return Check("store", FAIL, f"{path} is not readable and writable by this process (uid {os.geteuid()})",
                     "run as its owner (or a member of its group with g+rw), or fix its permissions")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o002:
        return Check("store", WARN, f"{path} (mode {mode:o}) is writable by every user: anyone can break or "
                     "forge locks, or corrupt the database", "chmod o-w (600 for one user, 660 with a group)")
    return Check("store", PASS, f"{path} (mode {mode:o}) is readable and writable by this process")
