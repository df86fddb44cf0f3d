"""The worker of the clock-jump scenario (tests/lab/test_clock.py), run as its own program.

It must be a fresh program, not a fork: the faults are applied at ``exec``, by
``LD_PRELOAD=libfaketime.so.1`` (a wall clock stepped by +-1 h, the monotonic clocks left
alone) or by ``unshare --time`` (a time namespace: ``CLOCK_MONOTONIC`` and ``CLOCK_BOOTTIME``
shifted). ``python -m lab.clockworker URL PROC HISTORY_DIR`` with ``tests/`` on ``PYTHONPATH``.

It reads one JSON command per line on stdin and answers one JSON line on stdout:

* ``{"op": "hello"}``: its clocks (wall, raw and corrected monotonic), so the test can check
  that the fault is really in force before it trusts any result.
* ``{"op": "contend", "key", "seconds", "seed"}``: take the key over and over until the time
  is up, with timed holds (``hold_timeout`` 0.5-1 s) and process-bound ones, a short piece of
  work inside, sometimes abandoning a timed hold (no release: it must run out on its own);
  every step goes to its history (:class:`lab.history.HistoryWriter`).
* ``{"op": "hold", "key", "ttl"}``: take the key with ``hold_timeout=ttl`` and keep it
  without renewing; answer when (invoke, ok) it was granted.
* ``{"op": "take", "key", "timeout"}``: take the key (waiting), answer when it got it, release.
* ``{"op": "quit"}``.

Times in answers and histories are ``CLOCK_MONOTONIC`` nanoseconds *of the host*: a worker in
a time namespace subtracts its namespace's monotonic offset (read from
``/proc/self/timens_offsets`` here, independently of the library under test), so that every
process's events sit on one time line.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from typing import Any

import txlock
from lab.history import HistoryWriter

#: The range of ``hold_timeout`` of the timed holds taken in ``contend``.
TTL_RANGE = (0.5, 1.0)
#: Share of timed holds (the rest are bound to the process), and of timed holds abandoned.
TIMED_SHARE, ABANDON_SHARE = 0.5, 0.04
#: The work inside a hold (seconds): far shorter than any ttl, so a hold that another process
#: breaks early is a wrong judgment of its expiry, never a slow holder.
WORK_RANGE = (0.0, 0.003)
#: How long one acquire waits before it is recorded as failed (an abandoned hold lasts <= 1 s).
ACQUIRE_WAIT = 10.0


def monotonic_offset_ns() -> int:
    """This process's ``CLOCK_MONOTONIC`` offset from the host's (0 outside a time namespace)."""
    try:
        with open("/proc/self/timens_offsets") as file:
            for line in file:
                name, seconds, nanoseconds = line.split()
                if name in ("monotonic", "1"):
                    return int(seconds) * 1_000_000_000 + int(nanoseconds)
    except FileNotFoundError:
        pass
    return 0


_OFFSET_NS = monotonic_offset_ns()


def host_ns() -> int:
    """``CLOCK_MONOTONIC`` of the host, in nanoseconds."""
    return time.monotonic_ns() - _OFFSET_NS


def work(seconds: float) -> None:
    """The work inside a hold: busy for ``seconds`` (libfaketime breaks ``time.sleep``'s
    ``clock_nanosleep`` with an absolute deadline, so no sleeping here)."""
    end = time.monotonic_ns() + int(seconds * 1e9)
    while time.monotonic_ns() < end:
        pass


class ClockWorker:
    """One worker: a manager on the store under test and a history."""

    def __init__(self, url: str, proc: str, history: str) -> None:
        self.manager = txlock.from_url(url)
        self.proc = proc
        self.history = HistoryWriter(history, proc)
        self.rounds = 0

    def hello(self) -> dict[str, Any]:
        return {"wall": time.time(), "monotonic_ns": time.monotonic_ns(), "host_ns": host_ns(),
                "offset_ns": _OFFSET_NS}

    def contend(self, key: str, seconds: float, seed: int, least: int = 3) -> dict[str, Any]:
        """Take ``key`` over and over for ``seconds``, and on until at least ``least`` holds
        of each kind (timed, process-bound) were granted, for at most 5 x ``seconds`` in all
        (see the module's docstring)."""
        rng = random.Random(seed)
        write = self.history.write
        start = host_ns()
        deadline, last = start + int(seconds * 1e9), start + int(5 * seconds * 1e9)
        counts = {"acquisitions": 0, "timed": 0, "bound": 0, "abandoned": 0, "timeouts": 0, "stolen": 0}
        while (now := host_ns()) < deadline or (now < last and min(counts["timed"], counts["bound"]) < least):
            self.rounds += 1
            holder = f"{self.proc}-{self.rounds}"  # never the same holder twice: no re-acquire
            ttl = rng.uniform(*TTL_RANGE) if rng.random() < TIMED_SHARE else None
            invoke = write(key, "acquire", "invoke", t_ns=host_ns(), value=ttl)
            lease = self.manager.acquire_lease(key, holder, timeout=ACQUIRE_WAIT, ttl=ttl)
            if lease is None:
                write(key, "acquire", "fail", t_ns=host_ns())
                counts["timeouts"] += 1
                continue
            # The hold lasts at least until invoke + ttl (granted after the call began).
            until = None if ttl is None else invoke + int(ttl * 1e9)
            write(key, "acquire", "ok", token=lease.token, valid_until_ns=until, t_ns=host_ns())
            counts["acquisitions"] += 1
            counts["timed" if ttl is not None else "bound"] += 1
            work(rng.uniform(*WORK_RANGE))
            if ttl is not None and rng.random() < ABANDON_SHARE:
                counts["abandoned"] += 1  # stop here: the hold must run out by itself
                continue
            write(key, "release", "invoke", t_ns=host_ns())
            try:
                self.manager.release_lock(key, holder)
            except txlock.NotLockHolder:  # another process took the key while we held it
                write(key, "release", "fail", t_ns=host_ns())
                counts["stolen"] += 1
            else:
                write(key, "release", "ok", t_ns=host_ns())
        return counts

    def hold(self, key: str, ttl: float) -> dict[str, Any]:
        """Take ``key`` for ``ttl`` seconds and let it run out (no renewal, no release)."""
        self.rounds += 1
        invoke = host_ns()
        granted = self.manager.acquire_lock(key, f"{self.proc}-{self.rounds}", acquire_timeout=ACQUIRE_WAIT,
                                            hold_timeout=ttl)
        return {"granted": granted, "invoke_ns": invoke, "ok_ns": host_ns()}

    def take(self, key: str, timeout: float) -> dict[str, Any]:
        """Take ``key`` (waiting up to ``timeout``), note when, release it."""
        self.rounds += 1
        holder = f"{self.proc}-{self.rounds}"
        invoke = host_ns()
        granted = self.manager.acquire_lock(key, holder, acquire_timeout=timeout)
        ok = host_ns()
        if granted:
            with contextlib.suppress(txlock.NotLockHolder):  # (the test judges the times)
                self.manager.release_lock(key, holder)
        return {"granted": granted, "invoke_ns": invoke, "ok_ns": ok}

    def serve(self) -> None:
        """Answer commands until ``quit`` or the end of stdin."""
        for line in sys.stdin:
            command = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                break
            answer = getattr(self, op)(**command)
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        self.history.close()
        self.manager.close()


def main(argv: list[str]) -> None:
    """``URL PROC HISTORY_DIR``: serve commands on stdin."""
    url, proc, history = argv
    ClockWorker(url, proc, history).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
