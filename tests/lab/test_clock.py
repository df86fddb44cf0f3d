"""Clock jumps: a client whose wall clock is stepped by +-1 h, or that lives in its own time
namespace, shares a store with normal processes (issue 14, scenario *clock jumps*).

Faults, each applied when the worker program starts (:mod:`lab.clockworker`):

* ``wall+1h`` / ``wall-1h``: ``LD_PRELOAD`` libfaketime with ``FAKETIME=+1h`` / ``-1h`` and
  ``FAKETIME_DONT_FAKE_MONOTONIC=1``: the wall clock is off by an hour, the monotonic and
  boot-time clocks are the host's.
* ``timens+1h`` / ``timens-1h``: ``unshare --time --monotonic D --boottime D``: the wall clock
  is the host's, ``CLOCK_MONOTONIC`` and ``CLOCK_BOOTTIME`` are shifted by D (+1 h; minus 1 h
  or as much as the host's uptime allows, a clock cannot be set before the boot).

Every test first checks, from the worker's own report, that its fault is in force.

What they prove, for the file and SQLite stores (the clients judge each other's expiries
there) and for Redis and PostgreSQL (the server's clock rules; a wall-stepped client only):

Each test (``test_a_clock_fault_on_a_local_store``, and
``test_the_server_clock_rules_for_a_wall_stepped_client``) runs two parts with one faulty
worker and two normal ones:

* contention: a faulty process and two normal ones take one key
  over and over with timed holds (``hold_timeout`` 0.5-1 s, some abandoned so that they run
  out on their own) and process-bound holds: 0 overlapping validity windows
  (:func:`lab.checkers.check_overlaps` over their histories). Histories are on the host's
  ``CLOCK_MONOTONIC``: a worker in a time namespace subtracts its own monotonic offset.
* lease lengths: a ttl=T hold (0.3 s) taken and left to run out, and a waiter
  that takes the key after it; the lease length the waiter observes (its grant time minus
  the holder's grant time) is never shorter than T (that would be two holders), and its
  median moves by at most 10 ms against control trials of two normal processes run
  interleaved in the same test. The control trials are how the waiter's wake-up latency is
  bounded: the same waiter, the same code path and the same machine load, without the fault,
  so the latency cancels out of the comparison. Each trial is also within 0.25 s of T (the
  fault, unfixed, moves it by an hour or stalls the waiter).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import selectors
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from _support import unavailable
from lab.checkers import check_overlaps
from lab.history import read_history
from lab.report import percentiles, record, scaled

TESTS_DIR = Path(__file__).resolve().parent.parent
HOUR = 3600
#: Trial hold length of the lease-length test (seconds).
LEASE_T = 0.3
#: How far the median lease length may move under a fault (seconds), and how far any single
#: trial may be from T at all (a gross bound: the unfixed fault moves it by an hour).
MOVE_LIMIT, TRIAL_LIMIT = 0.010, 0.25
#: The longest a command to a worker may take before the test gives up (bounded waits only).
ANSWER_TIMEOUT = 60.0

WALL_FAULTS = ["wall+1h", "wall-1h"]
FAULTS = [*WALL_FAULTS, "timens+1h", "timens-1h"]
LOCAL = [pytest.param(name, marks=[getattr(pytest.mark, name), pytest.mark.processes], id=name)
         for name in ("file", "sqlite")]
SERVERS = [pytest.param(name, marks=[getattr(pytest.mark, name), pytest.mark.processes], id=name)
           for name in ("redis", "postgres")]


@cache
def _faketime_library() -> str | None:
    """The path of libfaketime (Debian's ``faketime`` / ``libfaketime`` packages), if any."""
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/*/faketime/libfaketime.so.1",
                    "/usr/lib/faketime/libfaketime*.so.1", "/usr/local/lib/faketime/libfaketime*.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


@cache
def _timens_error() -> str | None:
    """Why ``unshare --time`` cannot make a time namespace here (``None``: it can)."""
    try:
        done = subprocess.run(["unshare", "--time", "--monotonic", "1", "--boottime", "1", "true"],
                              check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --time cannot run: {exc}"
    return None if done.returncode == 0 else f"unshare --time failed: {done.stderr.strip()}"


def _negative_offset() -> int:
    """The time namespace offset of ``timens-1h``: -1 h, or as far back as the uptime allows."""
    with open("/proc/uptime") as file:
        uptime = int(float(file.read().split()[0]))
    return -min(HOUR, uptime - 30)


def fault_command(fault: str | None) -> tuple[list[str], dict[str, str], int]:
    """``(command prefix, extra environment, expected shift in seconds)`` of ``fault``: of the
    wall clock for ``wall*``, of the monotonic clocks for ``timens*``."""
    if fault is None:
        return [], {}, 0
    sign = 1 if "+" in fault else -1
    if fault.startswith("wall"):
        library = _faketime_library()
        if library is None:
            unavailable("libfaketime is not installed (Debian package faketime)")
        env = {"LD_PRELOAD": library, "FAKETIME": f"{'+' if sign > 0 else '-'}1h",
               "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        return [], env, sign * HOUR
    error = _timens_error()
    if error is not None:
        unavailable(error)
    shift = HOUR if sign > 0 else _negative_offset()
    if shift > -60 and sign < 0:
        unavailable(f"the host booted too recently for a negative time namespace offset ({shift}s)")
    return ["unshare", "--time", "--monotonic", str(shift), "--boottime", str(shift)], {}, shift


class Worker:
    """A :mod:`lab.clockworker` program started by the test, with or without a clock fault."""

    def __init__(self, url: str, proc: str, history: Path, fault: str | None) -> None:
        self.proc, self.fault = proc, fault
        prefix, extra, self.shift = fault_command(fault)
        env = {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(TESTS_DIR), os.environ.get("PYTHONPATH")]))}
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "lab.clockworker", url, proc, str(history)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.selector = selectors.DefaultSelector()
        assert self.popen.stdout is not None
        self.selector.register(self.popen.stdout, selectors.EVENT_READ)

    def send(self, op: str, **args: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.popen.stdin.flush()

    def answer(self, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        """The next answer (a bounded wait: the worker's line, or a failure naming it)."""
        assert self.popen.stdout is not None
        if not self.selector.select(timeout):
            pytest.fail(f"worker {self.proc} ({self.fault}) did not answer within {timeout:g}s")
        line = self.popen.stdout.readline()
        if not line:
            pytest.fail(f"worker {self.proc} ({self.fault}) exited (status {self.popen.wait(10)})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.answer()

    def check_fault(self) -> None:
        """Fail unless the worker's clocks show its fault (so a result means something)."""
        import time

        hello = self.call("hello")
        if self.fault is not None and self.fault.startswith("wall"):
            skew = hello["wall"] - time.time()
            assert abs(skew - self.shift) < 60, f"{self.proc}: wall clock off by {skew:.0f}s, not {self.shift}s"
            assert hello["offset_ns"] == 0
        else:
            assert abs(hello["wall"] - time.time()) < 60, f"{self.proc}: its wall clock is off"
            assert hello["offset_ns"] == self.shift * 1_000_000_000, f"{self.proc}: offset {hello['offset_ns']}"
            # Its corrected monotonic clock is the host's (the histories rely on it).
            assert abs(hello["host_ns"] - time.monotonic_ns()) < 30 * 1_000_000_000

    def stop(self) -> None:
        """Ask it to quit; kill it (our own child, never reaped yet) if it does not."""
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(15)
        self.selector.close()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # (a worker that died leaves a broken pipe)
                    stream.close()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Callable[[str, str], list[Worker]]]:
    """``trio(url, fault)``: a faulty worker and two normal ones, started at once and checked
    (stopped at the end of the test)."""
    started: list[Worker] = []

    def start(url: str, fault: str) -> list[Worker]:
        for proc, which in (("faulty", fault), ("normal-0", None), ("normal-1", None)):
            started.append(Worker(url, proc, tmp_path / "history", which))
        for worker in started:
            worker.check_fault()
        return list(started)

    yield start
    for worker in started:
        worker.stop()


def contend(workers: list[Worker], key: str, seconds: float) -> dict[str, dict[str, int]]:
    """Run ``contend`` on every worker at once; each one's counts."""
    for index, worker in enumerate(workers):
        worker.send("contend", key=key, seconds=seconds, seed=index)
    return {worker.proc: worker.answer(5 * seconds + ANSWER_TIMEOUT) for worker in workers}


def lease_trial(holder: Worker, waiter: Worker, key: str) -> float:
    """One ttl=T hold by ``holder`` run out, taken by ``waiter``: the lease length the waiter
    observed minus T, in seconds; fails at once if the waiter got in before T."""
    held = holder.call("hold", key=key, ttl=LEASE_T)
    assert held["granted"], f"{holder.proc} could not take free key {key}"
    taken = waiter.call("take", key=key, timeout=30.0)
    assert taken["granted"], f"{waiter.proc} never got {key} after {holder.proc}'s {LEASE_T}s hold"
    t_ns = int(LEASE_T * 1e9)
    assert taken["ok_ns"] >= held["invoke_ns"] + t_ns, (
        f"{waiter.proc} took {key} {(held['invoke_ns'] + t_ns - taken['ok_ns']) / 1e6:.3f} ms before "
        f"{holder.proc}'s hold could end: two holders")
    return (taken["ok_ns"] - held["ok_ns"] - t_ns) / 1e9


def run_scenario(url: str, backend: str, fault: str, workers: list[Worker], history: Path) -> None:
    """Both parts on ``url`` (see the module's docstring): contention, then lease lengths."""
    faulty, first, second = workers
    counts = contend(workers, "k", scaled(15, 600) / 10)
    violations = check_overlaps(read_history(history))
    assert counts["faulty"]["timed"] and counts["faulty"]["bound"], counts  # the fault met both kinds of hold

    kinds: dict[str, tuple[Worker, Worker]] = {
        "control": (first, second), "faulty-holds": (faulty, second), "faulty-waits": (first, faulty)}
    errors: dict[str, list[float]] = {kind: [] for kind in kinds}
    if not violations:
        for trial in range(scaled(5, 30)):
            for kind, (holder, waiter) in kinds.items():  # interleaved: all kinds see the same load
                errors[kind].append(lease_trial(holder, waiter, f"lease-{kind}-{trial}"))
    figures = {kind: percentiles(value * 1000 for value in samples) for kind, samples in errors.items()}
    total = {name: sum(c[name] for c in counts.values()) for name in ("acquisitions", "timed", "abandoned", "stolen")}
    record("clock", backend, fault=fault, **total, faulty=counts["faulty"], overlaps=len(violations),
           trials=len(errors["control"]), lease_error_ms=figures)
    assert not violations, f"{len(violations)} overlaps:\n" + "\n".join(v.detail for v in violations[:5])
    assert not total["stolen"], f"{total['stolen']} holds were taken from their holder (release failed)"
    control = statistics.median(errors["control"])
    for kind in ("faulty-holds", "faulty-waits"):
        moved = statistics.median(errors[kind]) - control
        assert abs(moved) <= MOVE_LIMIT, f"{fault}, {kind}: lease length moved by {moved * 1000:.1f} ms ({figures})"
        worst = max(errors[kind], key=abs)
        assert abs(worst) <= TRIAL_LIMIT, f"{fault}, {kind}: a lease off by {worst * 1000:.1f} ms ({figures})"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("backend", LOCAL)
def test_a_clock_fault_on_a_local_store(
    backend: str, fault: str, lab_url: Callable[..., str], trio: Callable[[str, str], list[Worker]], tmp_path: Path
) -> None:
    url = lab_url(backend)
    run_scenario(url, backend, fault, trio(url, fault), tmp_path / "history")


@pytest.mark.parametrize("fault", WALL_FAULTS)
@pytest.mark.parametrize("backend", SERVERS)
def test_the_server_clock_rules_for_a_wall_stepped_client(
    backend: str, fault: str, lab_url: Callable[..., str], trio: Callable[[str, str], list[Worker]], tmp_path: Path
) -> None:
    url = lab_url(backend)
    run_scenario(url, backend, fault, trio(url, fault), tmp_path / "history")
