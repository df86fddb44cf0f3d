"""The *pause* scenario: a holder stopped past its lease wakes up and writes.

A holder process takes the key through ``manager.lock(key, ttl=T, on_lost=...)`` (renewed
every ``T / 3`` on txlock's background thread) and tells the test; the test SIGSTOPs it
(through a ``pidfd``) and keeps it stopped for at least 1.5 x T of the test's monotonic
clock, and until another process has taken the key and written to the fenced file with
its new token. Then the test resumes the stale holder, whose next instruction (the command
already waits in its pipe) is a write with its old token.

Asserted in every trial: the stale write is rejected by the fenced file; the holder's
``on_lost`` fires, ``.lost`` is ``True`` and leaving the block raises ``LockLost``; its
``release_lock(key, holder)`` afterwards leaves the new holder's lock intact
(``is_lock_holder``). On the merged history: no overlapping validity windows.

Short run: 5 trials per backend with T = 0.4 s; long run: 100 trials with T = 1 s.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

import txlock
from _support import eventually
from lab.conftest import lab_backends
from lab.report import long_run, percentiles, record, scaled
from lab.workers import Worker, context, pause_holder, pause_taker

TRIALS = scaled(5, 100)
TTL = 1.0 if long_run() else 0.4
#: How long the holder stays stopped, at least (the fault), in leases.
PAUSE = 1.5
#: How long the resumed holder waits for ``on_lost`` before reporting that it never came.
LOSS_WAIT = max(5.0, 10 * TTL)
REPLY_WAIT = 60.0
KEY = "pause-scenario"


def _reply(conn: Connection, what: str, timeout: float = REPLY_WAIT) -> Any:
    """The next message on ``conn``, or a test failure after ``timeout`` seconds."""
    if not conn.poll(timeout):
        pytest.fail(f"no {what} within {timeout:g}s")
    return conn.recv()


def _stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is in the stopped state (``T``)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        text = stat.read_text()
        states.append(text[text.rindex(")") + 2])
    return bool(states) and all(state == "T" for state in states)


class Pair:
    """The holder and the taker of one backend's run, each behind a pipe."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        ctx = context()
        self.history_dir = tmp_path / "history"
        self.fenced_path = tmp_path / "fenced"
        self.workers: list[Worker] = []
        self.holder, self.holder_conn = self._start(ctx, url, "holder", pause_holder)
        self.taker, self.taker_conn = self._start(ctx, url, "taker", pause_taker)

    def _start(self, ctx: Any, url: str, name: str, target: Callable[..., None]) -> tuple[Worker, Connection]:
        here, there = ctx.Pipe()
        worker = Worker(ctx, name, target, (url, KEY, str(self.history_dir), str(self.fenced_path), name, there))
        there.close()
        self.workers.append(worker)
        return worker, here

    def close(self) -> None:
        """Tell both to exit (resuming the holder first, should a failure leave it stopped)."""
        with contextlib.suppress(ProcessLookupError, RuntimeError):
            self.holder.signal(signal.SIGCONT)
        for worker, conn in ((self.holder, self.holder_conn), (self.taker, self.taker_conn)):
            with contextlib.suppress(OSError):
                conn.send(("exit",))
            worker.process.join(20)
            conn.close()
            worker.close()


def _trial(pair: Pair, manager: txlock.BaseLockManager, trial: int) -> dict[str, Any]:
    """One pause: hold, stop, take over, resume; the holder's report with the test's findings."""
    pair.holder_conn.send(("hold", trial, TTL, LOSS_WAIT))
    kind, old_token = _reply(pair.holder_conn, "grant to the holder")
    assert kind == "held"
    pair.holder.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        eventually(lambda: _stopped(pair.holder.pid), 10, "the holder to stop")
        pair.holder_conn.send(("write",))  # waits in the pipe: the first thing it reads on waking
        pair.taker_conn.send(("take", PAUSE * TTL + 30))
        took = _reply(pair.taker_conn, "grant to the taker")
        assert took[0] == "took", took
        _, new_token, taker_accepted = took
        remaining = stopped_at + PAUSE * TTL - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)  # the fault lasts at least PAUSE leases
    finally:
        paused = time.monotonic() - stopped_at
        pair.holder.signal(signal.SIGCONT)
    kind, report = _reply(pair.holder_conn, "report from the resumed holder")
    assert kind == "report"
    assert isinstance(report, dict)
    report.update(
        trial=trial, old_token=old_token, new_token=new_token, taker_write_accepted=taker_accepted,
        paused_s=paused, new_holder_intact=manager.is_lock_holder(KEY, "taker"),
    )
    pair.taker_conn.send(("release",))
    assert _reply(pair.taker_conn, "release by the taker") == ("released",)
    return report


@pytest.mark.timeout(scaled(120, 1800))
@pytest.mark.parametrize("backend", lab_backends())
def test_pause(backend: str, lab_url: Callable[..., str], tmp_path: Path) -> None:
    """A holder paused past its lease learns of the loss and cannot harm the new holder."""
    from lab.checkers import check_overlaps
    from lab.history import read_history

    url = lab_url(backend)
    manager = txlock.from_url(url)
    pair = Pair(url, tmp_path)
    reports: list[dict[str, Any]] = []
    try:
        for trial in range(TRIALS):
            reports.append(_trial(pair, manager, trial))
    finally:
        pair.close()
        manager.close()

    overlaps = check_overlaps(read_history(pair.history_dir))
    signal_delays = [r["loss_signal_after_resume_s"] for r in reports if "loss_signal_after_resume_s" in r]
    record(
        "pause", backend,
        trials=len(reports), ttl_s=TTL,
        stale_writes_rejected=sum(1 for r in reports if r["stale_write_accepted"] is False),
        loss_signals=sum(1 for r in reports if r["on_lost_fired"]),
        lost_flags=sum(1 for r in reports if r["lost_flag"]),
        lockLost_at_exit=sum(1 for r in reports if r["lock_lost_at_exit"]),
        new_holder_intact=sum(1 for r in reports if r["new_holder_intact"]),
        overlaps=len(overlaps),
        paused_s=percentiles(r["paused_s"] for r in reports),
        loss_signal_after_resume_s=percentiles(signal_delays),
    )
    for r in reports:
        assert r["new_token"] > r["old_token"], r
        assert r["taker_write_accepted"] is True, r
        assert r["stale_write_accepted"] is False, r
        assert r["on_lost_fired"] is True, r
        assert r["lost_flag"] is True, r
        assert r["lock_lost_at_exit"] is True, r
        assert r["new_holder_intact"] is True, r
        assert r["paused_s"] >= PAUSE * TTL, r
    assert overlaps == [], overlaps[:5]
    assert len(reports) == TRIALS
