"""The command ``txlock run`` executes: started, sent our signals, ended when the lock is lost.

The command dies with txlock (Linux ``PR_SET_PDEATHSIG``), gets the signals sent to txlock,
and is terminated (SIGTERM, then SIGKILL after ``--kill-after``) when the hold ends while it
runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from txlock import _scheduler
from txlock.cli._signals import handling_signals

if TYPE_CHECKING:
    import subprocess

    from txlock.cli._output import Output

__all__ = ["FORWARDED", "Child", "forwarding_signals"]

#: Signals ``run`` forwards to the command.
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


class Child:
    """The command ``run`` executes: start, forward signals, terminate when the lock is lost."""

    def __init__(self, key: str, output: Output, kill_after: float) -> None:
        self.key = key
        self.output = output
        self.kill_after = kill_after
        self.process: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        self.lost_reason: str | None = None
        self._guard = threading.Lock()
        # Interactive use keeps the command in our process group, so it can use the
        # terminal; otherwise it gets a group of its own, so that signals and a lost
        # lock reach everything it started (`sh -c 'a; b'`), as timeout(1) does.
        self.own_group = not os.isatty(0)

    # -- signals

    def forward(self, signal_number: int, frame: object) -> None:
        if not self.own_group and signal_number in (signal.SIGINT, signal.SIGQUIT) and _in_foreground():
            return  # the terminal sent it to the command too
        if self.process is None:
            self.pending.append(signal_number)
        else:
            self.signal(signal_number)

    def signal(self, signal_number: int) -> None:
        process = self.process
        if process is None:
            return
        try:
            if self.own_group:
                os.killpg(process.pid, signal_number)
            elif process.returncode is None:
                process.send_signal(signal_number)
        except (ProcessLookupError, PermissionError):
            pass

    # -- lock lost

    def lose(self, reason: str) -> None:
        """The hold ended while the command runs: SIGTERM now, SIGKILL after ``kill_after``."""
        with self._guard:
            if self.lost_reason is not None:
                return
            self.lost_reason = reason
        self.output.note(f"lock {self.key!r} was lost ({reason}); terminating the command")
        self.signal(signal.SIGTERM)
        _scheduler.schedule(self._kill, self.kill_after, name="txlock kill-after")

    def _kill(self) -> bool:
        process = self.process
        if process is not None and process.poll() is None:
            self.output.note(f"the command did not exit {self.kill_after:g}s after SIGTERM; killing it")
            self.signal(signal.SIGKILL)
        return False

    # -- the process

    def start(self, command: Sequence[str], env: dict[str, str]) -> None:
        import subprocess  # lazy: only `run` needs it

        # preexec_fn only calls prctl(2) and getppid(2); neither takes a lock another
        # thread (the background renewal thread) could hold at fork time.
        self.process = subprocess.Popen(
            list(command),
            env=env,
            preexec_fn=_die_with_parent(),  # noqa: PLW1509
            process_group=0 if self.own_group else None,
        )
        for signal_number in self.pending:
            self.signal(signal_number)
        self.pending.clear()

    def wait(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        if self.lost_reason is not None and self.own_group:
            self.signal(signal.SIGKILL)  # stragglers of a command whose lock is gone
        return 128 - code if code < 0 else code


def forwarding_signals(child: Child) -> AbstractContextManager[None]:
    """Send the :data:`FORWARDED` signals txlock gets to ``child`` inside the block."""
    signal_numbers = [getattr(signal, name) for name in FORWARDED if hasattr(signal, name)]
    return handling_signals(signal_numbers, child.forward)


def _in_foreground() -> bool:
    """Whether our process group is the terminal's foreground group."""
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the command die with txlock (Linux ``PR_SET_PDEATHSIG``).

    If txlock is killed (SIGKILL, OOM killer) its hold is freed by the backend's crash
    recovery; the command must not go on running unlocked.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # lazy: only `run` needs it

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent:  # txlock died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
