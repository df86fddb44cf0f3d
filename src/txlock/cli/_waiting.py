"""Waiting for a lock: the live ``waiting for`` line, the timeout message, signals while waiting."""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import AbstractContextManager

import txlock
from txlock import _scheduler
from txlock.cli._exit_codes import TIMED_OUT, CliError
from txlock.cli._output import Output, duration, shown, write
from txlock.cli._signals import handling_signals

__all__ = ["DISPLAY_INTERVAL", "Interrupted", "WaitLine", "interruptible", "timed_out_error", "wants_wait_line"]

#: Seconds between two looks at the holder while a waiting line is shown.
DISPLAY_INTERVAL = 0.5


class WaitLine:
    """A live ``waiting for 'KEY' (held by H for 12s)`` line on stderr while a call waits.

    Drawn only when stderr is a terminal (and not with ``--json``); refreshed from the
    process's one background thread, which asks the store who holds the key.
    """

    def __init__(self, manager: txlock.BaseLockManager, key: str, enabled: bool) -> None:
        self.manager = manager
        self.key = key
        self.enabled = enabled
        self._guard = threading.Lock()
        self._drawn = False
        self._done = False
        self._job: _scheduler.Job | None = None

    def __enter__(self) -> WaitLine:
        if self.enabled:
            self._job = _scheduler.schedule(self._draw, DISPLAY_INTERVAL, name="txlock wait line", first_delay=0.15)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self._guard:
            self._done = True
            if self._job is not None:
                self._job.cancel()
            if self._drawn:
                write(sys.stderr, "\r\x1b[K")
                self._drawn = False

    def _draw(self) -> bool:
        try:
            info = self.manager.inspect(self.key)
        except txlock.LockError:
            return True  # the waiting call itself reports a failing store
        with self._guard:
            if self._done:
                return False
            if info is None:
                line = f"txlock: waiting for {self.key!r}"
            else:
                held = duration(time.time() - info.acquired_at)
                line = f"txlock: waiting for {self.key!r} (held by {shown(info.holder)} for {held})"
            import shutil  # lazy: only a terminal needs it

            columns = shutil.get_terminal_size((80, 24)).columns
            write(sys.stderr, "\r\x1b[K" + line[: max(10, columns - 1)])
            self._drawn = True
        return True


def wants_wait_line(output: Output) -> bool:
    """Whether a waiting command shows a :class:`WaitLine` (people at a terminal only)."""
    return not output.json and sys.stderr.isatty()


def timed_out_error(manager: txlock.BaseLockManager, key: str, timeout: float | None) -> CliError:
    """The error of a wait that gave up: for how long, and who holds ``key`` now."""
    within = "at once (--timeout 0)" if timeout == 0 else f"within {timeout:g}s"
    try:
        info = manager.inspect(key)
    except txlock.LockError:
        info = None
    held = "" if info is None else f"; held by {shown(info.holder)} for {duration(time.time() - info.acquired_at)}"
    message = f"lock {key!r} was not free {within}{held}; try again later or raise --timeout"
    return CliError(TIMED_OUT, "timed_out", message)


class Interrupted(BaseException):
    """A terminating signal arrived while waiting for the lock."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def _interrupt(signal_number: int, frame: object) -> None:
    raise Interrupted(signal_number)


def interruptible() -> AbstractContextManager[None]:
    """Turn SIGTERM / SIGHUP into :class:`Interrupted` while waiting, so the wait cleans up."""
    return handling_signals((signal.SIGTERM, signal.SIGHUP), _interrupt)
