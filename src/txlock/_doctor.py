"""``txlock doctor``: checks that a lock store is deployed safely, as a library.

:func:`run_checks` takes a store's URL and returns a list of :class:`Check` results, each
``pass``, ``warn`` or ``fail`` with what was found and what to do. The checks every store
gets live here: opening it, reachability and round-trip time, the clock-skew measurement
the network stores use, and the live check, where two processes (spawned, each rebuilding
the manager from the URL) contend on a scratch key ``txlock-doctor:<random>`` and the
hand-off time is measured. Each backend's own checks live in
``txlock/backends/<name>/doctor.py`` (the local stores share :mod:`txlock._doctor_filesystem`).

A backend's ``doctor`` module may define:

* ``preflight(url) -> Findings``: checks made before the manager is built (the local stores:
  building the manager of a missing directory or database file would create it);
* ``checks(manager, scratch_key) -> Findings``: the server's facts, read-only.

``Findings.blocker`` says why the store cannot be used as it is without being changed (a
missing directory, database file or table set): then doctor does not run the calls that
would create it (``is_locked`` and the live check) and says so. Doctor writes nothing but
its scratch key, which it releases (and force-releases if a worker died holding it).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import IO, Any, NamedTuple

from txlock._errors import LockError
from txlock._manager import BaseLockManager

__all__ = [
    "FAIL",
    "LIVE_SECONDS",
    "PASS",
    "QUICK_SECONDS",
    "SCRATCH_PREFIX",
    "WARN",
    "Check",
    "Findings",
    "clock_skew",
    "exit_code",
    "run_checks",
    "worker_main",
    "worst",
]

PASS, WARN, FAIL = "pass", "warn", "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}

#: Every scratch key starts with this (followed by 12 random hex digits).
SCRATCH_PREFIX = "txlock-doctor:"
#: Seconds of the live check (``--quick``: :data:`QUICK_SECONDS`).
LIVE_SECONDS = 5.0
QUICK_SECONDS = 1.0
#: Timed ``is_locked`` calls whose median is the round-trip time (after one to connect).
RTT_CALLS = 5
#: Round trip above which each acquire and release is noticeably slow.
RTT_WARN = 0.05
#: Clock skew above which the times people see are noticeably off.
SKEW_WARN = 1.0
#: Median hand-off above which waiters are woken late.
HANDOFF_WARN = 0.25
#: The live check's holds end on their own after this long if a worker dies holding one.
HOLD_TTL = 5.0
#: Longest wait for a spawned worker to build its manager and reach the store.
READY_TIMEOUT = 60.0

#: The module of each backend's own checks, by the canonical scheme of its manager.
_BACKEND_CHECKS = {
    "file": "txlock.backends.file.doctor",
    "sqlite": "txlock.backends.sqlite.doctor",
    "redis": "txlock.backends.redis.doctor",
    "postgresql": "txlock.backends.postgres.doctor",
}

_STORE_ERRORS = (LockError, OSError)


class Check(NamedTuple):
    """One result: ``check`` (a stable id), ``status`` (``pass``/``warn``/``fail``), what was
    found (``detail``) and what to do (``advice``, empty when there is nothing to do)."""

    check: str
    status: str
    detail: str
    advice: str = ""

    def as_json(self) -> dict[str, str]:
        """The JSON form: ``{check, status, detail, advice}``."""
        return self._asdict()


class Findings(NamedTuple):
    """What a backend's checks found; ``blocker`` says why using the store through the
    manager would change it (then the calls that would are not made)."""

    checks: list[Check]
    blocker: str | None = None


def worst(checks: Sequence[Check]) -> str:
    """The worst status among ``checks`` (``pass`` when there are none)."""
    return max((check.status for check in checks), key=_RANK.__getitem__, default=PASS)


def exit_code(checks: Sequence[Check]) -> int:
    """0 when every check passed, 1 with warnings, 2 with failures."""
    return _RANK[worst(checks)]


def one_line(exception: BaseException) -> str:
    """An error on one line (server messages may span several)."""
    return " ".join(str(exception).split()) or type(exception).__name__


def milliseconds(seconds: float) -> str:
    """``0.42 ms``, ``12.3 ms``, ``1503 ms``."""
    ms = seconds * 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


# ---------------------------------------------------------------------- the runner


def run_checks(url: str | None = None, *, live_seconds: float = LIVE_SECONDS) -> list[Check]:
    """Check the store ``url`` names (``None``: ``$TXLOCK_URL``, else the embedded default).

    Never raises for what it finds: a bad URL, a missing extra or an unreachable server are
    ``fail`` results. ``live_seconds`` is the length of the live check.
    """
    from txlock._url import default_url, manager_class

    url = default_url() if url is None else url
    scratch = SCRATCH_PREFIX + uuid.uuid4().hex[:12]
    try:
        from urllib.parse import urlsplit

        cls = manager_class(urlsplit(url).scheme)
    except (LockError, ImportError, ValueError) as exc:
        return [_bad_configuration(exc)]
    backend = _backend_module(cls)
    results: list[Check] = []
    blocker: str | None = None
    preflight = getattr(backend, "preflight", None)
    if preflight is not None:
        try:
            found: Findings = preflight(url)
        except (LockError, ValueError) as exc:
            return [_bad_configuration(exc)]
        results += found.checks
        blocker = found.blocker
    if blocker is not None:
        return [*results, _not_run("live-contention", blocker)]
    try:
        import txlock

        manager = txlock.from_url(url)
    except (LockError, ImportError, ValueError, TypeError, OSError) as exc:
        return [*results, _bad_configuration(exc)]
    try:
        return _with_manager(manager, url, backend, scratch, results, live_seconds)
    finally:
        manager.close()


def _with_manager(
    manager: BaseLockManager, url: str, backend: Any, scratch: str, results: list[Check], live_seconds: float
) -> list[Check]:
    store_checks = getattr(backend, "checks", None)
    found = Findings([])
    try:
        if store_checks is not None:
            found = store_checks(manager, scratch)
        if found.blocker is None:
            reach = _reach(manager, scratch)
        else:
            reach = [Check("reachability", PASS, f"{manager.url} answered doctor's read-only queries")]
    except _STORE_ERRORS as exc:
        return [*results, _unreachable(manager, exc)]
    except Exception as exc:  # a bug or an unforeseen server reply: reported, never a traceback
        return [*results, Check(
            "doctor", FAIL, f"a check stopped unexpectedly: {type(exc).__name__}: {one_line(exc)}",
            "report it to txlock's issue tracker with this line; the checks above it stand",
        )]
    head = [check for check in reach if not any(c.check == check.check for c in found.checks)]
    results = [*head, *results, *found.checks]
    if found.blocker is not None:
        return [*results, _not_run("live-contention", found.blocker)]
    results.append(live_check(manager, url, scratch, live_seconds))
    cleanup = _remove_scratch(manager, scratch)
    return results if cleanup is None else [*results, cleanup]


def _backend_module(cls: type[BaseLockManager]) -> Any:
    name = _BACKEND_CHECKS.get(cls.schemes[0] if cls.schemes else "")
    return None if name is None else importlib.import_module(name)


def _bad_configuration(exc: BaseException) -> Check:
    from txlock._errors import MissingDependency

    if isinstance(exc, (MissingDependency, ImportError)):
        advice = "install the extra the message names (pip install 'txlock[redis]' / 'txlock[postgres]')"
    else:
        advice = "fix the URL (--url, $TXLOCK_URL); docs/cli.md lists the forms every store accepts"
    return Check("configuration", FAIL, f"cannot open the lock store: {one_line(exc)}", advice)


def _unreachable(manager: BaseLockManager, exc: BaseException) -> Check:
    return Check(
        "reachability", FAIL, f"{manager.url}: {one_line(exc)}",
        "check that the server is running and reachable from this host, and that the URL (host, port, "
        "user, password, database) is the one your processes use; doctor checks nothing else until it answers",
    )


def _not_run(name: str, reason: str) -> Check:
    return Check(
        name, WARN, f"not run: {reason}",
        "doctor changes nothing but its scratch key: run it again once txlock's first use has created the store",
    )


def _reach(manager: BaseLockManager, scratch: str) -> list[Check]:
    """Reachability (the first call, which connects) and the median of a few more."""
    start = time.perf_counter()
    manager.is_locked(scratch)
    first = time.perf_counter() - start
    samples = []
    for _ in range(RTT_CALLS):
        start = time.perf_counter()
        manager.is_locked(scratch)
        samples.append(time.perf_counter() - start)
    median = percentile(samples, 0.5)
    reach = Check("reachability", PASS, f"{manager.url} answered (first call, with connecting: {milliseconds(first)})")
    detail = (
        f"median of {RTT_CALLS} is_locked calls: {milliseconds(median)} (max {milliseconds(max(samples))}); "
        "an uncontended acquire or release costs one such round trip"
    )
    if median > RTT_WARN:
        return [reach, Check(
            "round-trip", WARN, detail,
            f"above {milliseconds(RTT_WARN)}: every acquire, release and hand-off waits this long; run the "
            "store close to its clients (same region / network), or expect slower locks",
        )]
    return [reach, Check("round-trip", PASS, detail)]


def _remove_scratch(manager: BaseLockManager, scratch: str) -> Check | None:
    """Make sure the scratch key is free; a check only when something had to be done."""
    try:
        info = manager.inspect(scratch)
        if info is None:
            return None
        manager.force_release(scratch)
        if manager.inspect(scratch) is None:
            return Check(
                "cleanup", WARN, f"the scratch key {scratch!r} was still held by {info.holder!r} after the "
                "live check (a worker died?); doctor force-released it", "",
            )
    except _STORE_ERRORS as exc:
        return Check("cleanup", FAIL, f"could not free the scratch key {scratch!r}: {one_line(exc)}",
                     f"run: txlock force-release {scratch} --yes (it also ends on its own within {HOLD_TTL:g}s)")
    return Check("cleanup", FAIL, f"the scratch key {scratch!r} is still held after force_release",
                 f"run: txlock force-release {scratch} --yes (it also ends on its own within {HOLD_TTL:g}s)")


# ---------------------------------------------------------------------- clock skew


def clock_skew(read_server_time: Callable[[], float], server: str, *, samples: int = 3) -> tuple[float, float]:
    """How far ``server``'s clock is ahead of this host's (seconds; negative: behind), and
    the uncertainty (half the round trip of the best of ``samples`` readings)."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        before = time.time()
        at_server = read_server_time()
        after = time.time()
        reading = (at_server - (before + after) / 2, (after - before) / 2)
        if best is None or reading[1] < best[1]:
            best = reading
    assert best is not None
    return best


def skew_check(skew: float, uncertainty: float, server: str, clock: str) -> Check:
    """Judge a measured skew. ``clock`` names how the server's clock is read (``TIME``)."""
    side = "ahead of" if skew >= 0 else "behind"
    detail = (
        f"the {server}'s clock ({clock}) is {abs(skew):.3f} s {side} this host's (±{milliseconds(uncertainty)}). "
        f"Leases are judged by the {server}'s clock only, so exclusion, expiry and fencing never depend on this "
        "host's clock; the skew shifts only the wall-clock times people and programs see: Lease.expires_at and "
        "LockInfo.acquired_at / expires_at are the server's times, so `txlock status` / `ls` 'held for' and "
        "'expires in' and any comparison of expires_at with this host's time.time() are off by the skew"
    )
    if abs(skew) > SKEW_WARN:
        return Check(
            "clock-skew", WARN, detail,
            "synchronise both clocks (NTP: chrony, systemd-timesyncd); compare expiry on the server's clock or "
            "with the lease's ttl, never with this host's time.time()",
        )
    return Check("clock-skew", PASS, detail)


# ---------------------------------------------------------------------- the live check


class _Grant(NamedTuple):
    got: float  # time.monotonic() when acquire returned (CLOCK_MONOTONIC: one clock per host)
    releasing: float  # time.monotonic() just before release
    token: int
    worker: int


def contend(manager: BaseLockManager, key: str, holder: str, seconds: float) -> list[tuple[float, float, int]]:
    """Take and release ``key`` as ``holder`` as often as possible for ``seconds``;
    ``(acquired, releasing, token)`` per grant (``time.monotonic()``)."""
    grants = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        lease = manager.acquire_lease(key, holder, timeout=left, ttl=HOLD_TTL)
        if lease is None:
            break
        got = time.monotonic()
        releasing = time.monotonic()
        manager.release_lock(key, holder)
        grants.append((got, releasing, lease.token))
    return grants


def live_check(manager: BaseLockManager, url: str, scratch: str, seconds: float) -> Check:
    """Two workers contend on ``scratch`` for ``seconds``: hand-off times, overlaps, tokens.

    The workers are processes that rebuild the manager from ``url``, except for stores that
    live in one process (``memory://``), where they are threads sharing ``manager``."""
    local = not manager.capabilities.processes
    try:
        per_worker = _in_threads(manager, scratch, seconds) if local else _in_processes(url, scratch, seconds)
    except _WorkerFailed as failure:
        return Check(
            "live-contention", FAIL, f"a worker failed: {failure}",
            "the store refuses ordinary lock traffic from this host: fix what the message names (permissions, "
            "ACLs, a read-only replica), then run doctor again",
        )
    who = "2 threads (memory:// lives in one process)" if local else "2 processes"
    return _judge(who, [_Grant(*grant, worker) for worker, grants in enumerate(per_worker) for grant in grants],
                  seconds)


class _WorkerFailed(Exception):
    pass


def _in_threads(manager: BaseLockManager, scratch: str, seconds: float) -> list[list[tuple[float, float, int]]]:
    results: list[list[tuple[float, float, int]]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(index: int) -> None:
        try:
            barrier.wait()
            results[index] = contend(manager, scratch, f"txlock-doctor-{index}", seconds)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(index,), name=f"txlock-doctor-{index}") for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise _WorkerFailed(one_line(errors[0]))
    return results


def _in_processes(url: str, scratch: str, seconds: float) -> list[list[tuple[float, float, int]]]:
    import txlock

    # The workers import this txlock (the directory holding the package goes first on
    # their path unless it is there already).
    root = os.path.dirname(os.path.dirname(os.path.abspath(txlock.__file__)))
    workers: list[tuple[subprocess.Popen[str], IO[bytes]]] = []
    try:
        for index in range(2):
            log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, root],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )
            workers.append((proc, log))
            assert proc.stdin is not None
            config = {"url": url, "key": scratch, "holder": f"txlock-doctor-{index}", "seconds": seconds}
            proc.stdin.write(json.dumps(config) + "\n")
            proc.stdin.flush()
        for proc, errors in workers:
            line = _read_line(proc, READY_TIMEOUT)
            if line.strip() != "ready":
                raise _WorkerFailed(_failure(line, proc, errors))
        results = []
        for proc, _ in workers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc, errors in workers:
            try:
                out = proc.communicate(timeout=seconds + READY_TIMEOUT)[0]
            except subprocess.TimeoutExpired:
                raise _WorkerFailed(f"a worker did not finish within {seconds + READY_TIMEOUT:g}s") from None
            reply: dict[str, Any] = (
                json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": _failure("", proc, errors)}
            )
            if "error" in reply:
                raise _WorkerFailed(reply["error"])
            results.append([(float(got), float(releasing), int(token)) for got, releasing, token in reply["grants"]])
        return results
    finally:
        for proc, errors in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None and not pipe.closed:
                    with contextlib.suppress(OSError):
                        pipe.close()
            errors.close()


_WORKER = (
    "import sys; root = sys.argv[1]; sys.path[:0] = [] if root in sys.path else [root]; "
    "from txlock._doctor import worker_main; worker_main()"
)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    if not readable:
        return ""
    return proc.stdout.readline()


def _failure(line: str, proc: subprocess.Popen[str], log: IO[bytes]) -> str:
    try:
        return str(json.loads(line)["error"])
    except (ValueError, KeyError, TypeError):
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.seek(0)
    tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
    return f"exited with {proc.returncode} before it was ready" + (f": {' / '.join(tail)}" if tail else "")


def worker_main() -> None:
    """A live-check worker (a spawned process): build the manager from the URL on stdin,
    say ``ready``, wait for ``go``, contend, print the grants as JSON."""
    import txlock

    config = json.loads(sys.stdin.readline())
    result: dict[str, Any]
    manager = None
    try:
        manager = txlock.from_url(config["url"])
        manager.is_locked(config["key"])  # connect before the start
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "go":
            return
        result = {"grants": contend(manager, config["key"], config["holder"], float(config["seconds"]))}
    except Exception as exc:  # reported to the parent, which reports it as a failure
        result = {"error": f"{type(exc).__name__}: {one_line(exc)}"}
    finally:
        if manager is not None:
            manager.close()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _judge(who: str, grants: list[_Grant], seconds: float) -> Check:
    pairs = list(itertools.pairwise(sorted(grants)))
    overlaps = sum(1 for a, b in pairs if b.got < a.releasing)
    regressions = sum(1 for a, b in pairs if b.token <= a.token)
    handoffs = [b.got - a.releasing for a, b in pairs if a.worker != b.worker]
    if overlaps or regressions:
        return Check(
            "live-contention", FAIL,
            f"{who}, {len(grants)} grants in {seconds:g} s: {overlaps} grant(s) while the other worker still held "
            f"the key, {regressions} token(s) not larger than the one before",
            "the store does not exclude: it is not one shared store (a proxy spreading writes, a replica, a "
            "network filesystem), or it lost writes; see the checks above",
        )
    if not handoffs:
        return Check(
            "live-contention", WARN, f"{who}: {len(grants)} grants in {seconds:g} s, but no hand-off between them",
            "one worker never got the key while the other wanted it: run doctor again without --quick; if it "
            "persists, waiters are not woken (see the inotify / LISTEN checks)",
        )
    p50, p99 = percentile(handoffs, 0.5), percentile(handoffs, 0.99)
    detail = (
        f"{who} took the scratch key {len(grants)} times in {seconds:g} s, {len(handoffs)} hand-offs between them: "
        f"hand-off (release called -> the other worker holds it) p50 {milliseconds(p50)}, p99 {milliseconds(p99)}, "
        f"max {milliseconds(max(handoffs))}; never two holders, tokens always increasing"
    )
    if p50 > HANDOFF_WARN:
        return Check(
            "live-contention", WARN, detail,
            f"a median hand-off above {milliseconds(HANDOFF_WARN)} means waiters are woken late (polling instead "
            "of wake-ups, or a slow store): see the checks above",
        )
    return Check("live-contention", PASS, detail)
