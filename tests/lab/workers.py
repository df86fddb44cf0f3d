"""Worker processes of the kill and pause scenarios, and the small process kit they share.

The workers run in processes forked by a ``forkserver`` that has already imported txlock,
its backends and this module (:func:`context`), so a respawn costs a fork, not a Python
start-up: the kill scenario respawns a worker five times a second. Every worker writes its
own history file (:class:`lab.history.HistoryWriter`) and never sleeps to order anything:
it waits on locks, pipes and events only.

* :func:`kill_worker`: acquire (a process-bound hold) -> fenced write -> release, in a loop,
  until a stop file appears or its deadline passes; it may be SIGKILLed at any point.
* :func:`pause_holder`: on command, enters ``manager.lock(key, ttl=T, on_lost=...)``, tells
  the test it holds the key (the test then SIGSTOPs it); after SIGCONT it writes with its
  old token at once, then reports what it saw of the loss.
* :func:`pause_taker`: on command, takes the key (while the holder is stopped), writes with
  its token, and releases it when told.
* :class:`Worker`: a started worker with a ``pidfd`` opened while it was known alive, so a
  signal can only ever reach that process (never a process that reused its pid).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

#: Modules the forkserver imports once, so that every forked worker starts with them.
PRELOAD = [
    "txlock",
    "txlock.backends.file",
    "txlock.backends.sqlite",
    "txlock.backends.redis",
    "txlock.backends.postgres",
    "lab.history",
    "lab.fenced",
    "lab.workers",
]

#: How long a worker's single acquire waits before it records a timeout and tries again
#: (so that it notices the stop file; a holder's kill blocks the key for ``liveness``).
ACQUIRE_WAIT = 5.0


def context() -> BaseContext:
    """The multiprocessing context of the lab's workers (a preloaded ``forkserver``).

    Goes through :func:`_support.unavailable` where workers cannot be signalled safely
    (no ``pidfd``: Linux before 5.3, or not Linux).
    """
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        from _support import unavailable

        unavailable("the lab signals its workers through pidfds (Linux >= 5.3)")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # no effect once a forkserver runs (then it is only slower)
    return ctx


class Worker:
    """A worker process started by the test, signalled only through a ``pidfd``.

    The ``pidfd`` is opened right after the start and kept only if the process is still
    ours at that moment (its sentinel not yet closed): from then on it names that process
    and no other, even once the pid is reused.
    """

    def __init__(self, ctx: BaseContext, name: str, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.name = name
        self.process: BaseProcess = ctx.Process(target=target, args=args, name=name, daemon=True)  # type: ignore[attr-defined]
        self.process.start()
        pid = self.process.pid
        assert pid is not None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
        # Dead before we could pin it: the fd (if any) may name another process.
        if self._pidfd is None or not self.process.is_alive():
            self.close()
            raise RuntimeError(f"worker {name} exited at once (exit code {self.process.exitcode})")

    @property
    def pid(self) -> int:
        """The worker's pid (for display only; signals go through the pidfd)."""
        assert self.process.pid is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        """Send ``signum`` to this worker (and only to it)."""
        if self._pidfd is None:
            raise RuntimeError(f"worker {self.name} is closed")
        signal.pidfd_send_signal(self._pidfd, signum)

    def close(self) -> None:
        """Forget the process (kill it first if it is still running)."""
        if self._pidfd is not None:
            if self.process.exitcode is None and self.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                self.process.join(10)
            os.close(self._pidfd)
            self._pidfd = None
        with contextlib.suppress(ValueError):
            self.process.close()


# ---------------------------------------------------------------------------------- kill


def kill_worker(
    url: str,
    key: str,
    history_dir: str,
    fenced_path: str,
    proc: str,
    counts: Any,
    holding: Any,
    slot: int,
    stop_path: str,
    deadline_ns: int,
) -> None:
    """Acquire ``key`` (process-bound hold), write to the fenced file with the grant's
    token, release; again, until ``stop_path`` exists or ``deadline_ns`` passes.

    ``counts[slot]`` counts this worker's grants (for the test to know when to stop), and
    ``holding[slot]`` is 1 from its grant to its release (for the killer to find a holder).
    Both are shared, lock-free arrays: a worker may die at any point, so no lock may guard
    them.
    """
    import txlock
    from lab.fenced import FencedFile
    from lab.history import HistoryWriter

    manager = txlock.from_url(url)
    history = HistoryWriter(history_dir, proc)
    fenced = FencedFile(fenced_path)
    rounds = 0
    try:
        while not os.path.exists(stop_path) and time.monotonic_ns() < deadline_ns:
            history.write(key, "acquire", "invoke")
            try:
                lease = manager.acquire_lease(key, proc, timeout=ACQUIRE_WAIT)
            except txlock.LockError as exc:
                history.write(key, "acquire", "info", value=repr(exc))
                continue
            if lease is None:
                history.write(key, "acquire", "fail")
                continue
            history.write(key, "acquire", "ok", token=lease.token)
            counts[slot] += 1
            holding[slot] = 1
            rounds += 1
            payload = f"{proc}:{rounds}"
            accepted = fenced.write(lease.token, payload)
            history.write(key, "write", "ok" if accepted else "fail", token=lease.token, value=payload)
            holding[slot] = 0
            history.write(key, "release", "invoke", token=lease.token)
            try:
                manager.release_lock(key, proc)
            except txlock.NotLockHolder as exc:
                history.write(key, "release", "fail", token=lease.token, value=str(exc))
            except txlock.LockError as exc:
                history.write(key, "release", "info", token=lease.token, value=repr(exc))
            else:
                history.write(key, "release", "ok", token=lease.token)
    finally:
        history.close()
        manager.close()


# --------------------------------------------------------------------------------- pause


def _valid_until_ns(ctx: Any, invoked_ns: int, ttl: float) -> int:
    """The end of a ``lock()`` block's validity as the client knows it: the context's
    ``valid_until`` when txlock exposes it, else the acquire's invoke time + ``ttl``."""
    valid_until = getattr(ctx, "valid_until", None)
    if valid_until is not None:
        return int(valid_until * 1e9)
    return invoked_ns + int(ttl * 1e9)


def pause_holder(url: str, key: str, history_dir: str, fenced_path: str, proc: str, conn: Connection) -> None:
    """Serve the pause scenario's holder side over ``conn`` until told ``("exit",)``.

    ``("hold", trial, ttl, wait)``: enter ``manager.lock(key, ttl=ttl, on_lost=...)``, send
    ``("held", token)``, then block on ``conn`` (the test stops the process there). The next
    message, ``("write",)``, is already waiting when the process resumes: it writes to the
    fenced file with its old token at once, then waits (at most ``wait`` seconds) for the
    loss to be signalled, leaves the block, calls ``release_lock(key, holder)``, and sends
    ``("report", {...})``: whether the write was accepted, ``on_lost`` fired, ``.lost``,
    ``LockLost`` at exit, and what ``release_lock`` did.
    """
    import txlock
    from lab.fenced import FencedFile
    from lab.history import HistoryWriter

    manager = txlock.from_url(url)
    history = HistoryWriter(history_dir, proc)
    fenced = FencedFile(fenced_path)
    try:
        while True:
            message = conn.recv()
            if message[0] == "exit":
                return
            _, trial, ttl, wait = message
            conn.send(("report", _hold_once(manager, key, history, fenced, proc, trial, ttl, wait, conn)))
    finally:
        history.close()
        manager.close()
        conn.close()


def _hold_once(
    manager: Any,
    key: str,
    history: Any,
    fenced: Any,
    proc: str,
    trial: int,
    ttl: float,
    wait: float,
    conn: Connection,
) -> dict[str, Any]:
    """One trial of :func:`pause_holder` (see there); returns its report."""
    import txlock

    holder = f"{proc}-trial-{trial}"
    lost = threading.Event()
    lost_at: list[int] = []

    def on_lost(lease: txlock.Lease) -> None:
        lost_at.append(history.write(key, "lost", "info", token=lease.token))
        lost.set()

    report: dict[str, Any] = {"holder": holder}
    invoked = history.write(key, "acquire", "invoke")
    ctx = manager.lock(key, holder, timeout=30, ttl=ttl, on_lost=on_lost)
    try:
        with ctx:
            token = ctx.token
            history.write(key, "acquire", "ok", token=token, valid_until_ns=_valid_until_ns(ctx, invoked, ttl))
            report["token"] = token
            conn.send(("held", token))
            command = conn.recv()  # SIGSTOP lands here; the write command waits in the pipe
            assert command == ("write",), command
            resumed = time.monotonic_ns()
            payload = f"{holder}:stale"
            accepted = fenced.write(token, payload)
            history.write(key, "write", "ok" if accepted else "fail", token=token, value=payload)
            report["stale_write_accepted"] = accepted
            report["on_lost_fired"] = lost.wait(wait)
            if lost_at:  # negative: the watch thread signalled it before this thread's first step after SIGCONT
                report["loss_signal_after_resume_s"] = (lost_at[0] - resumed) / 1e9
            report["lost_flag"] = ctx.lost
            history.write(key, "release", "invoke", token=token)  # leaving the block releases
    except txlock.LockLost as exc:
        report["lock_lost_at_exit"] = True
        history.write(key, "release", "fail", token=report.get("token"), value=repr(exc))
    else:
        report["lock_lost_at_exit"] = False
        history.write(key, "release", "ok", token=report.get("token"))
    report["lost_flag_after_exit"] = ctx.lost
    history.write(key, "release", "invoke", token=report.get("token"))
    try:
        manager.release_lock(key, holder)
    except txlock.NotLockHolder as exc:
        report["release"] = "NotLockHolder"
        history.write(key, "release", "fail", token=report.get("token"), value=str(exc))
    else:
        report["release"] = "ok"
        history.write(key, "release", "ok", token=report.get("token"))
    return report


def pause_taker(url: str, key: str, history_dir: str, fenced_path: str, proc: str, conn: Connection) -> None:
    """Serve the pause scenario's other side over ``conn`` until told ``("exit",)``.

    ``("take", timeout)``: acquire ``key`` (process-bound hold), write to the fenced file
    with the new token, send ``("took", token, accepted)`` (or ``("timeout",)``).
    ``("release",)``: release it and send ``("released",)``.
    """
    import txlock
    from lab.fenced import FencedFile
    from lab.history import HistoryWriter

    manager = txlock.from_url(url)
    history = HistoryWriter(history_dir, proc)
    fenced = FencedFile(fenced_path)
    token: int | None = None
    try:
        while True:
            message = conn.recv()
            if message[0] == "exit":
                return
            if message[0] == "take":
                history.write(key, "acquire", "invoke")
                lease = manager.acquire_lease(key, proc, timeout=message[1])
                if lease is None:
                    history.write(key, "acquire", "fail")
                    conn.send(("timeout",))
                    continue
                token = lease.token
                history.write(key, "acquire", "ok", token=token)
                payload = f"{proc}:{token}"
                accepted = fenced.write(token, payload)
                history.write(key, "write", "ok" if accepted else "fail", token=token, value=payload)
                conn.send(("took", token, accepted))
            elif message[0] == "release":
                history.write(key, "release", "invoke", token=token)
                manager.release_lock(key, proc)
                history.write(key, "release", "ok", token=token)
                conn.send(("released",))
    finally:
        history.close()
        manager.close()
        conn.close()
