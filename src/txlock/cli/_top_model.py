"""What ``txlock top`` shows, worked out without a terminal: snapshots of a store, the rows
in display order, the rates that consecutive snapshots let us estimate, and the wait times
of this process's own acquisitions.

Pure: no I/O, no clock read unless a caller omits one, no terminal library. ``_top``
draws what this module computes.

**Acquisitions per second are a floor.** A store tells ``top`` only who holds what now
(``list_locks``), not what happened between two looks. Fencing tokens strictly increase
per key across grants, so between two snapshots a key whose token changed was granted at
least once, and a key held now but not at the previous look was granted at least once.
Counting those is a lower bound of the grants; it cannot be more, because:

* the size of a token's increase says nothing about how many grants there were: Redis
  and PostgreSQL take ``max(last token + 1, the server clock in microseconds)``, so a
  token grows by about a million a second whatever the traffic; the memory store counts
  tokens across all its keys; only some stores add exactly one per grant;
* a key taken and released between two looks (shorter than the refresh interval) is not
  seen at all, and neither are the grants of a key between its first and last grant in
  one interval.

So a hot key handed over a hundred times a second shows as about one grant per refresh.
The exact rates come from the process that takes the locks: its observers
(``txlock[prometheus]``, ``txlock[otel]``, ``txlock.add_observer``).

**Wait times** are visible only for acquisitions made by this process: :class:`WaitWindow`
is an observer of this process's managers. ``txlock top`` itself takes no lock, so from the
command line it has none and says so; a program that embeds the view (and takes locks in the
same process) gets p50 / p99 over the last minute.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from txlock._observe import LockEvent, Observer
from txlock._types import LockInfo
from txlock.cli._output import duration, info_json, shown, table

__all__ = [
    "COLUMNS",
    "MODE_EXCLUSIVE",
    "NOT_VISIBLE",
    "RATE_WINDOW",
    "RIGHT_ALIGNED",
    "WAIT_WINDOW",
    "GrantRate",
    "Snapshot",
    "WaitSummary",
    "WaitWindow",
    "display_order",
    "grants_between",
    "header_fields",
    "percentile",
    "plain_lines",
    "row_cells",
    "row_json",
    "take_snapshot",
    "waiters_total",
]

#: The mode of every hold today (txlock's locks are exclusive). The column stays so that
#: shared locks and semaphores can join it.
MODE_EXCLUSIVE = "exclusive"
#: Seconds of refreshes the acquisition rate is averaged over (a steadier figure than the
#: last interval alone).
RATE_WINDOW = 10.0
#: Seconds of this process's acquisitions the wait percentiles cover.
WAIT_WINDOW = 60.0
#: The header's wait line when this process has observed no acquisition.
NOT_VISIBLE = "not visible from here (see metrics)"

#: The table's columns, and which of them are right-aligned (numbers and durations).
COLUMNS = ("KEY", "HOLDER", "MODE", "TOKEN", "HELD FOR", "EXPIRES IN", "WAITERS")
RIGHT_ALIGNED = (3, 4, 5, 6)


@dataclass(frozen=True)
class Snapshot:
    """The locks held at one look at the store.

    Attributes:
        locks: the holds whose key starts with the prefix, in display order.
        wall: when the look was taken (``time.time()``): held-for and expires-in are
            measured from it.
        monotonic: the same moment on the monotonic clock: rates are measured with it.
        prefix: the key prefix the look was filtered by, or ``None``.
    """

    locks: tuple[LockInfo, ...]
    wall: float
    monotonic: float
    prefix: str | None = None


def display_order(locks: Iterable[LockInfo]) -> list[LockInfo]:
    """``locks`` sorted by longest held first (earliest grant), then by key."""
    return sorted(locks, key=lambda info: (info.acquired_at, info.key))


def take_snapshot(
    locks: Iterable[LockInfo], *, prefix: str | None = None, wall: float | None = None,
    monotonic: float | None = None,
) -> Snapshot:
    """A :class:`Snapshot` of ``locks`` (as ``list_locks`` returned them) at ``wall`` /
    ``monotonic`` (default: now), keeping the keys that start with ``prefix``."""
    kept = [info for info in locks if prefix is None or info.key.startswith(prefix)]
    return Snapshot(
        locks=tuple(display_order(kept)),
        wall=time.time() if wall is None else wall,
        monotonic=time.monotonic() if monotonic is None else monotonic,
        prefix=prefix,
    )


def grants_between(before: Snapshot, after: Snapshot) -> int:
    """A lower bound of the grants made between two snapshots: one per key whose token
    changed, one per key held in ``after`` but not in ``before`` (see the module's doc for
    why the size of a token's increase is not used)."""
    earlier = {info.key: info.token for info in before.locks}
    return sum(1 for info in after.locks if earlier.get(info.key) != info.token)


def waiters_total(snapshot: Snapshot) -> int | None:
    """The waiters of every key the store counts them for; ``None`` when it counts none."""
    counts = [info.waiters for info in snapshot.locks if info.waiters is not None]
    return sum(counts) if counts else None


class GrantRate:
    """Acquisitions per second (a floor, see :func:`grants_between`) over the refreshes of
    the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._last: Snapshot | None = None
        # (start, end, grants) of each interval between two consecutive snapshots.
        self._intervals: deque[tuple[float, float, int]] = deque()

    def add(self, snapshot: Snapshot) -> None:
        """Count the grants since the previous snapshot (whose prefix must be the same)."""
        if self._last is not None and snapshot.monotonic > self._last.monotonic:
            self._intervals.append((self._last.monotonic, snapshot.monotonic, grants_between(self._last, snapshot)))
        self._last = snapshot
        while self._intervals and self._intervals[0][1] < snapshot.monotonic - self.window:
            self._intervals.popleft()

    def per_second(self) -> float | None:
        """The floor of acquisitions per second; ``None`` before two snapshots."""
        if not self._intervals:
            return None
        span = self._intervals[-1][1] - self._intervals[0][0]
        return sum(grants for _, _, grants in self._intervals) / span


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` in (0, 1]), e.g. 0.99."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class WaitSummary:
    """The acquisitions of this process over the last :data:`WAIT_WINDOW` seconds.

    Attributes:
        acquisitions: how many grants.
        p50: the median seconds an acquisition took (waiting included).
        p99: the 99th percentile of the same.
        waits_per_second: acquisitions that had to wait for another holder, per second.
        timed_out: acquisitions that gave up.
    """

    acquisitions: int
    p50: float | None
    p99: float | None
    waits_per_second: float
    timed_out: int


class WaitWindow(Observer):
    """An observer of this process's managers that keeps the wait times of the last
    ``window`` seconds (register it with ``txlock.add_observer``)."""

    def __init__(self, window: float = WAIT_WINDOW, started: float | None = None) -> None:
        self.window = window
        self._started = time.monotonic() if started is None else started
        self._mutex = threading.Lock()
        # (monotonic time, seconds waited, contended) per grant; monotonic times of timeouts.
        self._grants: deque[tuple[float, float, bool]] = deque()
        self._timeouts: deque[float] = deque()

    def on_acquired(self, event: LockEvent) -> None:
        """Record one grant's wait."""
        self.record(time.monotonic(), event.waited or 0.0, event.contended)

    def on_timed_out(self, event: LockEvent) -> None:
        """Record one acquisition that gave up."""
        with self._mutex:
            self._timeouts.append(time.monotonic())

    def record(self, when: float, waited: float, contended: bool) -> None:
        """Record a grant made at ``when`` (monotonic) after ``waited`` seconds."""
        with self._mutex:
            self._grants.append((when, waited, contended))

    def summary(self, now: float | None = None) -> WaitSummary | None:
        """The last ``window`` seconds before ``now`` (monotonic; default: now); ``None``
        when this process made no acquisition in them."""
        now = time.monotonic() if now is None else now
        since = now - self.window
        with self._mutex:
            while self._grants and self._grants[0][0] < since:
                self._grants.popleft()
            while self._timeouts and self._timeouts[0] < since:
                self._timeouts.popleft()
            grants = list(self._grants)
            timed_out = len(self._timeouts)
        if not grants and not timed_out:
            return None
        waits = [waited for _, waited, _ in grants]
        # Per second of the window, or of the time watched so far when that is shorter.
        span = max(min(self.window, now - self._started), 1.0)
        return WaitSummary(
            acquisitions=len(grants),
            p50=percentile(waits, 0.5) if waits else None,
            p99=percentile(waits, 0.99) if waits else None,
            waits_per_second=sum(1 for _, _, contended in grants if contended) / span,
            timed_out=timed_out,
        )


def _wait_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else duration(seconds)


def header_fields(
    store: str,
    snapshot: Snapshot,
    *,
    acquisitions_per_second: float | None,
    counts_waiters: bool,
    waits: WaitSummary | None,
) -> list[tuple[str, str]]:
    """The header as ``(label, value)`` pairs: the store (its URL, password redacted), the
    keys, the rates, the waiters, the wait times."""
    keys = str(len(snapshot.locks)) + ("" if snapshot.prefix is None else f" (prefix {shown(snapshot.prefix)})")
    if acquisitions_per_second is None:
        rate = "- (needs two refreshes)"
    else:
        rate = f"≥ {acquisitions_per_second:.1f}/s (a floor: grants seen as new tokens between refreshes)"
    total = waiters_total(snapshot)
    if total is not None:
        waiters = str(total)
    elif counts_waiters:
        waiters = "0"
    else:
        waiters = "- (not counted by this store)"
    if waits is None:
        wait_line = NOT_VISIBLE
    else:
        wait_line = (
            f"p50 {_wait_time(waits.p50)}  p99 {_wait_time(waits.p99)}  waits {waits.waits_per_second:.1f}/s  "
            f"timed out {waits.timed_out}  (this process, last {WAIT_WINDOW:.0f}s)"
        )
    return [
        ("store", store),
        ("keys", keys),
        ("acquisitions", rate),
        ("waiters", waiters),
        ("wait times", wait_line),
    ]


def row_cells(info: LockInfo, now: float) -> tuple[str, ...]:
    """One table row (:data:`COLUMNS`) for ``info`` seen at ``now`` (``time.time()``)."""
    return (
        shown(info.key),
        shown(info.holder),
        MODE_EXCLUSIVE,
        str(info.token),
        duration(now - info.acquired_at),
        duration(None if info.expires_at is None else info.expires_at - now),
        "-" if info.waiters is None else str(info.waiters),
    )


def row_json(info: LockInfo, now: float) -> dict[str, Any]:
    """One hold as JSON: the fields of ``txlock ls --json`` and ``mode``."""
    return {**info_json(info, now), "mode": MODE_EXCLUSIVE}


def plain_lines(fields: Sequence[tuple[str, str]], snapshot: Snapshot) -> list[str]:
    """The view as plain text (``--once``, or stdout not a terminal): the header fields,
    one per line, then the held locks as an aligned table, longest held first."""
    width = max(len(label) for label, _ in fields)
    lines = [f"{label:<{width}}  {value}" for label, value in fields]
    lines.append("")
    rows = [row_cells(info, snapshot.wall) for info in snapshot.locks]
    lines.extend(table(COLUMNS, rows, right=RIGHT_ALIGNED))
    if not rows:
        lines.append("(no locks held)")
    return lines
