"""``txlock doctor``'s checks of a lock directory (``file://``), made before the manager is
built: building it would create a missing directory, and doctor changes nothing."""

from __future__ import annotations

import os

from txlock._doctor import FAIL, PASS, Check, Findings
from txlock._doctor_filesystem import filesystem_checks, nearest_existing
from txlock._options import local_path

__all__ = ["preflight"]

#: How waiters of this store wait without inotify (docs/file.md).
POLL = "a backoff from 1 ms to 50 ms"


def preflight(url: str) -> Findings:
    """The filesystem checks of the lock directory ``url`` names (or of its closest existing
    ancestor, when it does not exist yet: then ``blocker`` says so)."""
    directory = os.path.abspath(os.path.expanduser(local_path(url.split("?", 1)[0], "file", "file:///absolute/path")))
    store = f"the lock directory {directory}"
    if os.path.isdir(directory):
        return Findings(filesystem_checks(directory, store=store, sqlite=False, poll=POLL))
    if os.path.lexists(directory):
        return Findings([Check("store", FAIL, f"{directory} exists and is not a directory",
                               "name a directory in the URL (file:///path/to/dir), or move the file away")],
                        blocker=f"{directory} is not a directory")
    parent = os.path.dirname(directory)
    checks = filesystem_checks(nearest_existing(directory), store=store, sqlite=False, poll=POLL)
    if not os.path.isdir(parent) and "create=true" not in url.lower():
        first = Check("store", FAIL, f"{directory} does not exist, nor does its parent {parent}: txlock refuses "
                      "it (a typo must not make a separate set of locks)",
                      "create the parent, fix the path, or add ?create=true to the URL")
    else:
        first = Check("store", PASS, f"{directory} does not exist yet: txlock creates it (mode 700) on first use; "
                      "the checks below are of the directory it will be made in")
    return Findings([first, *checks], blocker=f"{directory} does not exist yet")
