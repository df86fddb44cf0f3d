"""Seeded-bug locks for the checkers' negative controls, and the workload that runs them.

Each broken lock is a real cross-process lock on files, wrong in one classic way:

* :class:`NoHolderCheckLock`: acquiring is atomic (``O_EXCL``), but release removes the lock
  file whoever holds it. A worker that releases after its acquire timed out (a ``finally``
  that did not check) frees somebody else's hold.
* :class:`ShortLeaseLock`: a correct lease (record under ``flock``, holder checked on
  release) whose lease is shorter than the work, and nobody renews it. The holder keeps
  writing after its ``valid_until`` while the next holder already works.
* :class:`RacyTestAndSetLock`: "read the owner file; if empty, write my name": a test and a
  set that are not one atomic step.

:class:`TxlockLock` wraps a real txlock manager for the positive control. :func:`run_worker`
is the workload every control runs in several processes: acquire (with a short timeout),
write to the resource a few times, release in a ``finally`` (also after a timed-out
acquire, which a correct lock answers with NotLockHolder or a no-op), and log everything
through :class:`lab.history.HistoryWriter`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lab.fenced import FencedFile
from lab.history import HistoryWriter

__all__ = [
    "Grant",
    "NoHolderCheckLock",
    "NotHolder",
    "RacyTestAndSetLock",
    "ShortLeaseLock",
    "TxlockLock",
    "Workload",
    "make_lock",
    "run_worker",
    "write_until_killed",
]

#: How often the broken locks poll while waiting (their own wait loop; it orders nothing).
POLL_S = 0.0005


class NotHolder(Exception):
    """A release refused because another process holds the lock."""


@dataclass(frozen=True)
class Grant:
    """What an acquire returns: the fencing token and the end of validity (monotonic ns)."""

    token: int
    valid_until_ns: int | None = None


class ControlLock(Protocol):
    """The little interface the workload drives."""

    def acquire(self, timeout: float) -> Grant | None:
        """Take the lock within ``timeout`` seconds, or ``None``."""
        ...

    def release(self) -> None:
        """Give it back; :class:`NotHolder` when another process holds it."""
        ...

    def close(self) -> None:
        """Free resources."""
        ...


def _next_token(directory: Path) -> int:
    """An atomic per-directory counter (a file under ``flock``)."""
    fd = os.open(directory / "token", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 64, 0)
        value = int(raw or b"0") + 1
        os.pwrite(fd, str(value).encode().ljust(20), 0)
        return value
    finally:
        os.close(fd)


def _poll(attempt: Callable[[], Grant | None], timeout: float) -> Grant | None:
    """Call ``attempt`` until it grants or ``timeout`` seconds pass (the lock's own wait)."""
    deadline = time.monotonic() + timeout
    while True:
        grant = attempt()
        if grant is not None or time.monotonic() >= deadline:
            return grant
        time.sleep(POLL_S)


class NoHolderCheckLock:
    """Seeded bug (a): release deletes the lock file without checking who holds it."""

    def __init__(self, directory: Path, holder: str) -> None:
        self.directory, self.holder = directory, holder
        self.path = directory / "owner"

    def _try(self) -> Grant | None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        os.write(fd, self.holder.encode())
        os.close(fd)
        return Grant(_next_token(self.directory))

    def acquire(self, timeout: float) -> Grant | None:
        """Create the owner file exclusively (atomic, correct)."""
        return _poll(self._try, timeout)

    def release(self) -> None:
        """The bug: remove the owner file, whoever wrote it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        """Nothing to free."""


class ShortLeaseLock:
    """Seeded bug (b): a correct lease lock whose lease is shorter than the work (no renewal)."""

    def __init__(self, directory: Path, holder: str, lease_s: float) -> None:
        self.directory, self.holder, self.lease_ns = directory, holder, int(lease_s * 1e9)
        self.path = directory / "lease"

    def _update(self, decide: Callable[[dict[str, Any], int], dict[str, Any] | None]) -> dict[str, Any]:
        """Read-decide-write the record under an exclusive flock; return the record kept."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 4096, 0).rstrip(b"\0 ")
            record: dict[str, Any] = json.loads(raw) if raw else {"holder": None, "until": 0, "token": 0}
            new = decide(record, time.monotonic_ns())
            if new is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(new).encode(), 0)
                return new
            return record
        finally:
            os.close(fd)

    def _try(self) -> Grant | None:
        def take(record: dict[str, Any], now: int) -> dict[str, Any] | None:
            if record["holder"] not in (None, self.holder) and int(record["until"]) > now:
                return None
            return {"holder": self.holder, "until": now + self.lease_ns, "token": int(record["token"]) + 1}

        record = self._update(take)
        if record["holder"] != self.holder:
            return None
        return Grant(int(record["token"]), int(record["until"]))

    def acquire(self, timeout: float) -> Grant | None:
        """Take the lease if free or expired (correct)."""
        return _poll(self._try, timeout)

    def release(self) -> None:
        """Free the lease if it is ours; NotHolder if another live holder has it (correct)."""
        refused = []

        def free(record: dict[str, Any], now: int) -> dict[str, Any] | None:
            if record["holder"] == self.holder:
                return {**record, "holder": None, "until": 0}
            if record["holder"] is not None and int(record["until"]) > now:
                refused.append(record["holder"])
            return None

        self._update(free)
        if refused:
            raise NotHolder(f"held by {refused[0]}")

    def close(self) -> None:
        """Nothing to free."""


class RacyTestAndSetLock:
    """Seeded bug (c): test (read the owner file) and set (write it) are separate steps."""

    def __init__(self, directory: Path, holder: str, gap_s: float) -> None:
        self.directory, self.holder, self.gap_s = directory, holder, gap_s
        self.path = directory / "owner"
        self.counter = directory / "counter"

    def _try(self) -> Grant | None:
        try:
            owner = self.path.read_text()
        except FileNotFoundError:
            owner = ""
        if owner not in ("", self.holder):
            return None
        time.sleep(self.gap_s)  # inject the fault: widen the window between test and set
        self.path.write_text(self.holder)
        try:
            token = int(self.counter.read_text() or "0") + 1
        except (FileNotFoundError, ValueError):
            token = 1
        self.counter.write_text(str(token))  # racy too: tokens may repeat
        return Grant(token)

    def acquire(self, timeout: float) -> Grant | None:
        """Test, then set (the bug)."""
        return _poll(self._try, timeout)

    def release(self) -> None:
        """Clear the owner file if it names us (racy as well)."""
        try:
            owner = self.path.read_text()
        except FileNotFoundError:
            return
        if owner == self.holder:
            self.path.write_text("")
        elif owner:
            raise NotHolder(f"held by {owner}")

    def close(self) -> None:
        """Nothing to free."""


class TxlockLock:
    """The positive control: a txlock manager (from a URL), holder = the process's name."""

    def __init__(self, url: str, key: str, holder: str, ttl: float | None) -> None:
        import txlock

        self.manager = txlock.from_url(url)
        self.key, self.holder, self.ttl = key, holder, ttl
        self._not_holder = txlock.NotLockHolder

    def acquire(self, timeout: float) -> Grant | None:
        """``acquire_lease``; the validity the client can know is invoke time + ttl."""
        started = time.monotonic_ns()
        lease = self.manager.acquire_lease(self.key, self.holder, timeout, self.ttl)
        if lease is None:
            return None
        until = None if self.ttl is None else started + int(self.ttl * 1e9)
        return Grant(lease.token, until)

    def release(self) -> None:
        """``release_lock``; NotLockHolder becomes :class:`NotHolder`."""
        try:
            self.manager.release_lock(self.key, self.holder)
        except self._not_holder as exc:
            raise NotHolder(str(exc)) from exc

    def close(self) -> None:
        """Close the manager."""
        self.manager.close()


@dataclass(frozen=True)
class Workload:
    """What each worker does: ``rounds`` acquisitions of ``key``, ``writes`` writes per hold."""

    kind: str  # "no_holder_check" | "short_lease" | "racy_tas" | "txlock"
    directory: str  # the lock's directory (or the txlock URL's directory)
    history: str  # where the histories go
    resource: str  # the FencedFile (or plain log) path
    key: str = "k"
    rounds: int = 40
    writes: int = 2
    work_s: float = 0.001  # pause between writes inside a hold (the "work")
    acquire_timeout: float = 0.02
    fenced: bool = True  # False: the resource accepts everything (an unprotected store)
    lease_s: float = 0.005  # ShortLeaseLock only
    gap_s: float = 0.0005  # RacyTestAndSetLock only
    ttl: float | None = None  # TxlockLock only


def make_lock(workload: Workload, holder: str) -> ControlLock:
    """The lock of ``workload.kind`` for ``holder``."""
    directory = Path(workload.directory)
    if workload.kind == "no_holder_check":
        return NoHolderCheckLock(directory, holder)
    if workload.kind == "short_lease":
        return ShortLeaseLock(directory, holder, workload.lease_s)
    if workload.kind == "racy_tas":
        return RacyTestAndSetLock(directory, holder, workload.gap_s)
    if workload.kind == "txlock":
        return TxlockLock(f"file://{directory}", workload.key, holder, workload.ttl)
    raise ValueError(f"unknown control {workload.kind!r}")


class _PlainLog:
    """An unprotected resource: accepts every write (appends it to a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, token: int, value: str) -> bool:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps([token, value]) + "\n").encode())
        finally:
            os.close(fd)
        return True


def run_worker(workload: Workload, proc: str, start: object = None) -> int:
    """One worker process: run ``workload`` as ``proc``; return the number of grants.

    ``start`` (a ``multiprocessing`` event) lines the workers up so they contend from the
    first round.
    """
    lock = make_lock(workload, proc)
    resource: FencedFile | _PlainLog = FencedFile(workload.resource) if workload.fenced else _PlainLog(
        workload.resource)
    history = HistoryWriter(workload.history, proc)
    key = workload.key
    grants = 0
    if start is not None:
        start.wait(30)  # type: ignore[attr-defined]
    try:
        for round_ in range(workload.rounds):
            history.write(key, "acquire", "invoke")
            grant = lock.acquire(workload.acquire_timeout)
            if grant is None:
                history.write(key, "acquire", "fail")
            else:
                grants += 1
                history.write(key, "acquire", "ok", token=grant.token, valid_until_ns=grant.valid_until_ns)
            try:
                if grant is not None:
                    for step in range(workload.writes):
                        if step:
                            time.sleep(workload.work_s)  # the work between two writes
                        value = f"{proc}:{round_}:{step}"
                        history.write(key, "write", "invoke", token=grant.token, value=value)
                        accepted = resource.write(grant.token, value)
                        history.write(key, "write", "ok" if accepted else "fail", token=grant.token, value=value)
            finally:
                # The pattern that seeded bug (a) punishes: release whether or not we got it.
                history.write(key, "release", "invoke")
                try:
                    lock.release()
                except NotHolder as exc:
                    history.write(key, "release", "fail", value=str(exc))
                else:
                    history.write(key, "release", "ok")
    finally:
        history.close()
        lock.close()
    return grants


def write_until_killed(directory: str, proc: str, limit: int = 200_000) -> None:
    """Append events (a kilobyte of payload each) until killed, or ``limit`` events (200 MB)."""
    history = HistoryWriter(directory, proc)
    payload = "x" * 1000
    for index in range(limit):
        history.write("k", "write", "invoke", token=index, value=payload)
