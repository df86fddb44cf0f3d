"""The host clock: the one clock every process of a host agrees on, whatever its wall clock
says and whatever time namespace it runs in.

Local stores (file, SQLite) keep timed holds as an expiry that other processes judge. The wall
clock (``time.time()``) is a poor judge: NTP, an operator or ``libfaketime`` can step it for
one process or all of them, and a hold then ends an hour early (two holders at once) or late.
``CLOCK_MONOTONIC`` and ``CLOCK_BOOTTIME`` are never stepped, but a process in its own time
namespace (``unshare --time``, containers) sees them shifted by its namespace's offsets.

So the host clock is ``CLOCK_BOOTTIME`` minus this process's boottime offset, read once from
``/proc/self/timens_offsets`` (absent: no time namespaces, offset 0): the same reading in
every process of the host, counting time spent suspended like a lease should. It restarts at
each boot, so every stored host-clock time is tagged with the boot id
(``/proc/sys/kernel/random/boot_id``); a time from another boot, or a store written without
one, is judged on the wall clock as before.

Where there is no such clock (not Linux, or a process that has entered a time namespace it
cannot describe), :data:`BOOT_ID` is ``None`` and callers use the wall clock alone.
The offset and the boot id never change during a process's life, so they are read once,
at import, and a forked child keeps them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

__all__ = ["BOOT_ID", "host_now", "offset_from", "read_boot_id", "read_offset"]

_OFFSETS = "/proc/self/timens_offsets"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def offset_from(text: str) -> float | None:
    """The ``boottime`` offset (seconds) in the text of a ``timens_offsets`` file; ``None``
    when the text names none."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] in ("boottime", "7"):  # a name, or CLOCK_BOOTTIME's number
            return int(fields[1]) + int(fields[2]) / 1e9
    return None


def read_offset() -> float | None:
    """The ``CLOCK_BOOTTIME`` offset of this process from the host's; ``None`` if unknowable.

    ``timens_offsets`` describes the namespace of the process's *future children*; it is the
    process's own only while both namespace links name the same namespace (a process that
    called ``unshare(CLONE_NEWTIME)`` itself and has not exec'd yet is the exception)."""
    try:
        with open(_OFFSETS) as file:
            text = file.read()
    except FileNotFoundError:
        return 0.0  # a kernel without time namespaces: every process reads the host's clocks
    except OSError:
        return None
    try:
        if os.readlink("/proc/self/ns/time") != os.readlink("/proc/self/ns/time_for_children"):
            return None
    except OSError:
        pass  # no namespace links to compare: the offsets file is all there is
    return offset_from(text)


def read_boot_id() -> bytes | None:
    """The 16 bytes of this boot's id, or ``None`` (not Linux, or unreadable)."""
    try:
        with open(_BOOT_ID) as file:
            # The UUID's 32 hex digits, read without the uuid module (and the platform
            # module it imports): start-up time.
            boot_id = bytes.fromhex(file.read().strip().replace("-", ""))
    except (OSError, ValueError):
        return None
    return boot_id if len(boot_id) == 16 else None


def _host_clock() -> tuple[bytes | None, Callable[[], float]]:
    boot_id = read_boot_id() if hasattr(time, "CLOCK_BOOTTIME") else None
    offset = read_offset() if boot_id is not None else None
    if boot_id is None or offset is None:
        return None, time.time
    clock = time.clock_gettime
    boottime = time.CLOCK_BOOTTIME
    if not offset:
        # The usual case, kept to one C call: host_now() costs what time.time() does.
        from functools import partial

        return boot_id, partial(clock, boottime)

    def shifted() -> float:
        return clock(boottime) - offset

    return boot_id, shifted


#: The boot this process's host clock belongs to (16 bytes); ``None``: no host clock here,
#: and :func:`host_now` is the wall clock.
BOOT_ID: bytes | None
#: ``host_now()``: seconds on the host clock (only differences between readings mean anything).
host_now: Callable[[], float]
BOOT_ID, host_now = _host_clock()
