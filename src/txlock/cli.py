"""The ``txlock`` command: hold a lock around any command, inspect and manage locks.

``flock(1)`` that works across processes and hosts, with leases, fencing tokens and
introspection, on every backend txlock has (``--url`` / ``$TXLOCK_URL``; without either,
the embedded default SQLite store in the user's state directory)::

    txlock run nightly-report -- ./make-report.sh     # wait, run while holding, release
    txlock ls                                         # what is held, by whom, for how long

Commands: ``run``, ``acquire``, ``release``, ``wait``, ``status``, ``ls``,
``force-release``; ``txlock COMMAND --help`` documents each, ``docs/cli.md`` all of them.

Exit codes (constants below): :data:`OK` 0, :data:`FAILED` 1 (the request was refused:
release by a holder that does not hold the lock, force-release declined),
:data:`USAGE` 2 (bad command line), :data:`BACKEND_ERROR` 69 (the store failed or cannot
be reached), :data:`TIMED_OUT` 75 (the lock stayed held for the whole ``--timeout``),
:data:`LOCK_LOST` 76 (``run``: the hold ended while the command ran; the command was
terminated), :data:`CONFIG` 78 (bad URL, unknown option, missing extra). ``run`` otherwise
exits with the command's own code (``128 + N`` when the command died of signal ``N``, 126 when
it cannot be executed, 127 when it is not found).

The module imports click, the standard library and the backend the URL names, nothing
more, so ``txlock run KEY -- true`` starts quickly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import txlock
from txlock import _scheduler
from txlock._types import LockInfo

if TYPE_CHECKING:
    import subprocess

    import click

__all__ = [
    "BACKEND_ERROR",
    "CONFIG",
    "FAILED",
    "LOCK_LOST",
    "OK",
    "TIMED_OUT",
    "USAGE",
    "main",
]

#: Success (``run``: the command exited with 0).
OK = 0
#: The request was refused: ``release`` by a holder that does not hold the lock,
#: ``force-release`` declined at the prompt.
FAILED = 1
#: Bad command line (unknown option, missing argument, a value out of range); click's code.
USAGE = 2
#: The lock store failed or cannot be reached (EX_UNAVAILABLE).
BACKEND_ERROR = 69
#: The lock was held for the whole ``--timeout`` (``--timeout 0``: held right now)
#: (EX_TEMPFAIL: try again later).
TIMED_OUT = 75
#: ``run``: the hold ended (expired, force-released) while the command ran; the command
#: was terminated.
LOCK_LOST = 76
#: Bad ``--url`` / ``$TXLOCK_URL``, unknown URL option, or a missing optional dependency
#: such as ``txlock[redis]`` (EX_CONFIG).
CONFIG = 78
#: ``run``: the command could not be executed / was not found (the shell's codes).
NOT_EXECUTABLE = 126
NOT_FOUND = 127

#: Seconds between two looks at the holder while a waiting line is shown.
DISPLAY_INTERVAL = 0.5
#: Seconds between two checks that a ``run`` hold without ``--ttl`` is still ours.
CHECK_INTERVAL = 1.0
#: Shortest ``--ttl``: a lease must outlive the start of the command and the gaps between
#: its renewals (every ttl/3) under ordinary load, on every backend.
MIN_TTL = 1.0
_MIN_TTL_WHY = (
    "a shorter lease can end before it is put to use (the command started) or between two renewals "
    "(every ttl/3) on a busy machine"
)
#: Default seconds a command gets between SIGTERM and SIGKILL when the lock is lost.
KILL_AFTER = 5.0

#: Signals ``run`` forwards to the command.
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

_MISSING_CLICK = "txlock's command line needs click: pip install 'txlock[cli]'"


# ---------------------------------------------------------------------- errors and output


class CliError(Exception):
    """An error reported as one line on stderr, ending the command with ``code``."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message


class _Out:
    """Where a command writes: people get text, scripts (``--json``) get JSON."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def data(self, value: Any) -> None:
        _write(sys.stdout, json.dumps(value) + "\n")

    def text(self, line: str) -> None:
        _write(sys.stdout, line + "\n")

    def note(self, line: str) -> None:
        """A remark for people on stderr (silent with ``--json``)."""
        if not self.json:
            _write(sys.stderr, f"txlock: {line}\n")

    def error(self, err: CliError) -> None:
        if self.json:
            _write(sys.stderr, json.dumps({"error": err.kind, "message": err.message, "exit_code": err.code}) + "\n")
        else:
            _write(sys.stderr, f"txlock: error: {err.message}\n")


def _write(stream: TextIO, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except UnicodeEncodeError:
        stream.write(text.encode("ascii", "backslashreplace").decode("ascii"))
        stream.flush()
    except BrokenPipeError:
        pass


class _LogHandler(logging.Handler):
    """Library warnings (a failed background renewal) as one line each on stderr."""

    def __init__(self, out: _Out) -> None:
        super().__init__(logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message}: {type(exc).__name__}: {exc}"
        if self.out.json:
            _write(sys.stderr, json.dumps({"warning": message}) + "\n")
        else:
            _write(sys.stderr, f"txlock: warning: {message}\n")


def _show(text: str) -> str:
    """A key or holder as people should see it: as is when plain, else quoted and escaped."""
    if text and text.isprintable() and text.strip() == text:
        return text
    return repr(text)


def duration(seconds: float | None) -> str:
    """``2.5s``, ``42s``, ``3m05s``, ``2h03m``, ``1d02h``; ``-`` for ``None``."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "forever"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds from ``"1.5"``, ``"30s"``, ``"500ms"``, ``"5m"``, ``"2h"``, ``"1d"`` or ``"inf"``."""
    if text.strip().lower() in {"inf", "infinity", "forever"}:
        return math.inf
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use seconds (1.5) or a unit: 500ms, 30s, 5m, 2h, 1d")
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def info_json(info: LockInfo, now: float | None = None) -> dict[str, Any]:
    """The JSON shape of a held lock (``status``, ``ls``)."""
    now = time.time() if now is None else now
    return {
        "key": info.key,
        "holder": info.holder,
        "token": info.token,
        "acquired_at": info.acquired_at,
        "expires_at": info.expires_at,
        "held_for": round(max(0.0, now - info.acquired_at), 3),
        "expires_in": None if info.expires_at is None else round(max(0.0, info.expires_at - now), 3),
        "waiters": info.waiters,
    }


def _width(text: str) -> int:
    import unicodedata  # lazy: only `ls` needs it

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1 for c in text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Align ``rows`` under ``header``; the columns in ``right`` are right-aligned."""
    widths = [max(_width(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - _width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return lines


# ---------------------------------------------------------------------- the store


_RECONNECTS = re.compile(r"[.;]? [Tt]he next call reconnects\.?")


def _one_line(exc: BaseException) -> str:
    """An error message on one line (server messages may span several)."""
    return " ".join(str(exc).split())


def _translate(exc: BaseException, url: str | None) -> CliError | None:
    """The one place where library errors become exit codes and one-line messages."""
    store = "the default store" if url is None else repr(txlock._url.redact(url))
    if isinstance(exc, txlock.MissingDependency):
        return CliError(CONFIG, "missing_dependency", f"{exc}; then run the command again")
    if isinstance(exc, txlock.ConfigurationError):
        return CliError(CONFIG, "configuration", f"bad lock store URL {store}: {exc}")
    # Backend messages name the store (password redacted) and the cause.
    if isinstance(exc, txlock.BackendUnavailable):
        # The library's advice about the next call does not apply to a command that ends.
        text = _RECONNECTS.sub("", _one_line(exc))
        advice = "(does --url / $TXLOCK_URL point at it?)"
        return CliError(BACKEND_ERROR, "backend_unavailable", f"cannot reach the lock store: {text} {advice}")
    if isinstance(exc, txlock.BackendError):
        return CliError(BACKEND_ERROR, "backend_error", f"lock store error: {_one_line(exc)}")
    if isinstance(exc, txlock.LockLost):
        return CliError(LOCK_LOST, "lock_lost", str(exc))
    if isinstance(exc, txlock.LockTimeout):
        return CliError(TIMED_OUT, "timed_out", str(exc))
    if isinstance(exc, (ValueError, TypeError)):
        return CliError(USAGE, "usage", str(exc))
    return None


@contextmanager
def _errors(url: str | None) -> Iterator[None]:
    try:
        yield
    except CliError:
        raise
    except Exception as exc:
        err = _translate(exc, url)
        if err is None:
            raise
        raise err from exc


def _manager(url: str | None) -> txlock.BaseLockManager:
    try:
        return txlock.from_url(url)
    except txlock.MissingDependency:
        raise
    except ImportError as exc:
        if url is None:
            raise CliError(
                CONFIG, "configuration", f"the embedded default store is not available in this install ({exc}); "
                "pass --url or set TXLOCK_URL (e.g. file:///tmp/txlock)"
            ) from exc
        raise CliError(
            CONFIG, "configuration", f"the backend for {txlock._url.redact(url)!r} cannot be loaded ({exc}); "
            "reinstall txlock or use another URL"
        ) from exc


# ---------------------------------------------------------------------- waiting, with a live line


class _WaitLine:
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

    def __enter__(self) -> _WaitLine:
        if self.enabled:
            self._job = _scheduler.schedule(self._draw, DISPLAY_INTERVAL, name="txlock wait line", first_delay=0.15)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self._guard:
            self._done = True
            if self._job is not None:
                self._job.cancel()
            if self._drawn:
                _write(sys.stderr, "\r\x1b[K")
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
                line = f"txlock: waiting for {self.key!r} (held by {_show(info.holder)} for {held})"
            import shutil  # lazy: only a terminal needs it

            columns = shutil.get_terminal_size((80, 24)).columns
            _write(sys.stderr, "\r\x1b[K" + line[: max(10, columns - 1)])
            self._drawn = True
        return True


def _timed_out(manager: txlock.BaseLockManager, key: str, timeout: float | None) -> CliError:
    within = "at once (--timeout 0)" if timeout == 0 else f"within {timeout:g}s"
    try:
        info = manager.inspect(key)
    except txlock.LockError:
        info = None
    held = "" if info is None else f"; held by {_show(info.holder)} for {duration(time.time() - info.acquired_at)}"
    message = f"lock {key!r} was not free {within}{held}; try again later or raise --timeout"
    return CliError(TIMED_OUT, "timed_out", message)


class _Interrupted(BaseException):
    """A terminating signal arrived while waiting for the lock."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGTERM / SIGHUP into an exception while waiting, so the wait cleans up."""

    def handler(signum: int, frame: object) -> None:
        raise _Interrupted(signum)

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------- run


class _Child:
    """The command ``run`` executes: start, forward signals, terminate when the lock is lost."""

    def __init__(self, key: str, out: _Out, kill_after: float) -> None:
        self.key = key
        self.out = out
        self.kill_after = kill_after
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        self.lost_reason: str | None = None
        self._guard = threading.Lock()
        # Interactive use keeps the command in our process group, so it can use the
        # terminal; otherwise it gets a group of its own, so that signals and a lost
        # lock reach everything it started (`sh -c 'a; b'`), as timeout(1) does.
        self.own_group = not os.isatty(0)

    # -- signals

    def forward(self, signum: int, frame: object) -> None:
        if not self.own_group and signum in (signal.SIGINT, signal.SIGQUIT) and _foreground():
            return  # the terminal sent it to the command too
        if self.proc is None:
            self.pending.append(signum)
        else:
            self.signal(signum)

    def signal(self, signum: int) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if self.own_group:
                os.killpg(proc.pid, signum)
            elif proc.returncode is None:
                proc.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass

    # -- lock lost

    def lose(self, reason: str) -> None:
        """The hold ended while the command runs: SIGTERM now, SIGKILL after ``kill_after``."""
        with self._guard:
            if self.lost_reason is not None:
                return
            self.lost_reason = reason
        self.out.note(f"lock {self.key!r} was lost ({reason}); terminating the command")
        self.signal(signal.SIGTERM)
        _scheduler.schedule(self._kill, self.kill_after, name="txlock kill-after")

    def _kill(self) -> bool:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.out.note(f"the command did not exit {self.kill_after:g}s after SIGTERM; killing it")
            self.signal(signal.SIGKILL)
        return False

    # -- the process

    def start(self, command: Sequence[str], env: dict[str, str]) -> None:
        import subprocess  # lazy: only `run` needs it

        # preexec_fn only calls prctl(2) and getppid(2); neither takes a lock another
        # thread (the background renewal thread) could hold at fork time.
        self.proc = subprocess.Popen(
            list(command),
            env=env,
            preexec_fn=_die_with_parent(),  # noqa: PLW1509
            process_group=0 if self.own_group else None,
        )
        for signum in self.pending:
            self.signal(signum)
        self.pending.clear()

    def wait(self) -> int:
        assert self.proc is not None
        code = self.proc.wait()
        if self.lost_reason is not None and self.own_group:
            self.signal(signal.SIGKILL)  # stragglers of a command whose lock is gone
        return 128 - code if code < 0 else code


def _foreground() -> bool:
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


@contextmanager
def _forwarding(child: _Child) -> Iterator[None]:
    saved = {}
    for name in FORWARDED:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            saved[sig] = signal.signal(sig, child.forward)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def cmd_run(
    out: _Out,
    *,
    url: str | None,
    key: str,
    command: Sequence[str],
    holder: str | None,
    timeout: float | None,
    ttl: float | None,
    kill_after: float,
) -> int:
    """``txlock run``: hold ``key`` while ``command`` runs; the command's exit code."""
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError(USAGE, "usage", "no command to run; use: txlock run KEY [OPTIONS] -- COMMAND [ARGS...]")
    holder = txlock.default_holder() if holder is None else holder
    child = _Child(key, out, kill_after)
    with _errors(url):
        manager = _manager(url)
        ctx = manager.lock(key, holder, timeout=timeout, ttl=ttl, on_lost=lambda lease: child.lose(_LOST_REASON))
        try:
            with _interruptible(), _WaitLine(manager, key, _live(out)):
                ctx.__enter__()
        except txlock.LockTimeout:
            raise _timed_out(manager, key, timeout) from None
        except _Interrupted as stop:
            out.note(f"interrupted while waiting for {key!r}")
            return 128 + stop.signum
        failed = True
        try:
            with _forwarding(child):
                lease = ctx.lease
                if ctx.lost or (lease.expires_at is not None and lease.expires_at <= time.time()):
                    raise CliError(
                        LOCK_LOST, "lock_lost",
                        f"lock {key!r} ended before the command could start; the command was not run",
                    )
                env = dict(os.environ, TXLOCK_KEY=key, TXLOCK_HOLDER=holder, TXLOCK_TOKEN=str(lease.token))
                try:
                    child.start(command, env)
                except FileNotFoundError:
                    raise CliError(NOT_FOUND, "not_found", f"command not found: {command[0]}") from None
                except PermissionError:
                    raise CliError(NOT_EXECUTABLE, "not_executable", f"cannot execute {command[0]}") from None
                check = None
                if ttl is None:
                    check = _scheduler.schedule(
                        lambda: _still_held(manager, ctx, child), CHECK_INTERVAL, name=f"txlock check {key!r}"
                    )
                try:
                    code = child.wait()
                finally:
                    if check is not None:
                        check.cancel()
            failed = False
        finally:
            try:
                ctx.__exit__(Exception if failed else None, None, None)
            except txlock.LockLost:
                child.lose(_LOST_REASON)
            except txlock.LockError as exc:
                # The hold ends anyway (with this process, or at its ttl).
                out.note(f"could not release {key!r}: {exc}")
    if child.lost_reason is not None:
        raise CliError(LOCK_LOST, "lock_lost", f"lock {key!r} was lost while the command ran ({child.lost_reason}); "
                       "the command was terminated")
    return code


_LOST_REASON = "it expired or was force-released"


def _still_held(manager: txlock.BaseLockManager, ctx: txlock.LockContext, child: _Child) -> bool:
    """Periodic check of a hold without ``--ttl`` (nothing renews it, so nothing else notices)."""
    try:
        lease = ctx.lease
    except RuntimeError:  # the command has ended and the hold was released meanwhile
        return False
    info = manager.inspect(lease.key)
    if info is not None and info.holder == lease.holder and info.token == lease.token:
        return True
    ctx.lost = True
    child.lose("it was force-released" if info is None else f"it is now held by {_show(info.holder)}")
    return False


def _live(out: _Out) -> bool:
    return not out.json and sys.stderr.isatty()


# ---------------------------------------------------------------------- the other commands


def cmd_acquire(
    out: _Out, *, url: str | None, key: str, holder: str | None, timeout: float | None, ttl: float
) -> int:
    """``txlock acquire``: a detached hold that ends after ``ttl`` seconds unless released."""
    import shlex

    holder = txlock.default_holder() if holder is None else holder
    with _errors(url):
        manager = _manager(url)
        try:
            with _interruptible(), _WaitLine(manager, key, _live(out)):
                lease = manager.acquire_lease(key, holder, timeout, ttl)
        except txlock.LockTimeout:
            lease = None
        except _Interrupted as stop:
            return 128 + stop.signum
        if lease is None:
            raise _timed_out(manager, key, timeout)
    if out.json:
        out.data({"key": key, "holder": holder, "token": lease.token, "expires_at": lease.expires_at, "ttl": ttl})
    else:
        out.text(f"key         {_show(key)}")
        out.text(f"holder      {_show(holder)}")
        out.text(f"token       {lease.token}")
        out.text(f"expires in  {duration(ttl)}")
        out.note(f"release with: txlock release {shlex.quote(key)} --holder {shlex.quote(holder)}")
    return OK


def cmd_release(out: _Out, url: str | None, key: str, holder: str) -> int:
    """``txlock release``: end a hold of ``holder``."""
    with _errors(url):
        manager = _manager(url)
        info = manager.inspect(key)
        try:
            manager.release_lock(key, holder)
        except txlock.NotLockHolder as exc:
            other = exc.actual_holder
            message = f"lock {key!r} is held by {_show(other or '?')}, not by {_show(holder)}; nothing released"
            if out.json:
                out.data({"key": key, "holder": holder, "released": False, "held_by": other})
                return FAILED
            raise CliError(FAILED, "not_holder", message) from None
    released = info is not None and info.holder == holder
    if out.json:
        out.data({"key": key, "holder": holder, "released": released, "held_by": None})
    elif released:
        out.note(f"released {key!r}")
    else:
        out.note(f"lock {key!r} was not held; nothing to release")
    return OK


def cmd_wait(out: _Out, url: str | None, key: str, timeout: float | None) -> int:
    """``txlock wait``: wait until ``key`` is free, without taking it."""
    started = time.monotonic()
    with _errors(url):
        manager = _manager(url)
        try:
            with _interruptible(), _WaitLine(manager, key, _live(out)):
                free = manager.wait_for_lock(key, timeout)
        except _Interrupted as stop:
            return 128 + stop.signum
        waited = round(time.monotonic() - started, 3)
        if out.json:
            out.data({"key": key, "free": free, "waited": waited})
            return OK if free else TIMED_OUT
        if not free:
            raise _timed_out(manager, key, timeout)
    return OK


def cmd_status(out: _Out, url: str | None, key: str) -> int:
    """``txlock status``: who holds ``key``, since when, until when."""
    with _errors(url):
        info = _manager(url).inspect(key)
    if out.json:
        out.data({"key": key, "held": False} if info is None else {"held": True, **info_json(info)})
        return OK
    if info is None:
        out.text(f"{_show(key)}: free")
        return OK
    now = time.time()
    expires = (
        "when released, or when its process exits"
        if info.expires_at is None
        else duration(info.expires_at - now)
    )
    out.text(f"{_show(key)}: held")
    out.text(f"  holder      {_show(info.holder)}")
    out.text(f"  token       {info.token}")
    out.text(f"  held for    {duration(now - info.acquired_at)}")
    out.text(f"  expires in  {expires}")
    out.text(f"  waiters     {_NOT_COUNTED if info.waiters is None else info.waiters}")
    return OK


_NOT_COUNTED = "not counted by this store (file and SQLite cannot see other processes' waiters)"


def cmd_ls(out: _Out, url: str | None, prefix: str | None) -> int:
    """``txlock ls``: every lock held now, as a table."""
    with _errors(url):
        locks = _manager(url).list_locks(prefix)
    now = time.time()
    if out.json:
        out.data([info_json(info, now) for info in locks])
        return OK
    if not locks:
        out.note("no locks held" + ("" if prefix is None else f" with prefix {prefix!r}"))
        return OK
    # A WAITERS column where the store counts its waiters (memory, Redis, PostgreSQL).
    counted = any(i.waiters is not None for i in locks)
    rows = [
        (
            _show(i.key),
            _show(i.holder),
            str(i.token),
            duration(now - i.acquired_at),
            duration(None if i.expires_at is None else i.expires_at - now),
            *([] if not counted else ["-" if i.waiters is None else str(i.waiters)]),
        )
        for i in locks
    ]
    header = ("KEY", "HOLDER", "TOKEN", "HELD FOR", "EXPIRES IN", *(["WAITERS"] if counted else []))
    for line in table(header, rows, right=(2, 3, 4, 5)):
        out.text(line)
    return OK


def cmd_force_release(out: _Out, url: str | None, key: str, yes: bool) -> int:
    """``txlock force-release``: free ``key`` whoever holds it, after confirmation."""
    with _errors(url):
        manager = _manager(url)
        info = manager.inspect(key)
        if info is None:
            if out.json:
                out.data({"key": key, "released": False, "holder": None, "token": None})
            else:
                out.note(f"lock {key!r} is not held; nothing to release")
            return OK
        if not yes:
            if not sys.stdin.isatty():
                raise CliError(
                    USAGE, "usage", f"refusing to force-release {key!r} without confirmation: stdin is not a "
                    "terminal; pass --yes"
                )
            import click  # lazy: click is optional

            question = (
                f"force-release {key!r}, held by {_show(info.holder)} (token {info.token}) for "
                f"{duration(time.time() - info.acquired_at)}?"
            )
            if not click.confirm(question, default=False, err=True):
                raise CliError(FAILED, "declined", f"lock {key!r} left alone")
        released = manager.force_release(key)
    if out.json:
        out.data({"key": key, "released": released, "holder": info.holder, "token": info.token})
    elif released:
        out.note(f"force-released {key!r} (was held by {_show(info.holder)}, token {info.token})")
    else:
        out.note(f"lock {key!r} was freed meanwhile; nothing to release")
    return OK


# ---------------------------------------------------------------------- click wiring


def _cli() -> click.Group:
    import click  # lazy: click is optional: main() explains when it is missing

    class Seconds(click.ParamType):  # type: ignore[type-arg]
        name = "seconds"

        def __init__(self, positive: bool = False, finite: bool = False, minimum: float = 0.0, why: str = "") -> None:
            self.positive = positive
            self.finite = finite
            self.minimum = minimum
            self.why = why

        def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
            if isinstance(value, (int, float)):
                seconds = float(value)
            else:
                try:
                    seconds = parse_duration(str(value))
                except ValueError as exc:
                    self.fail(str(exc), param, ctx)
            if math.isnan(seconds) or seconds < 0 or (self.positive and seconds == 0):
                self.fail(f"{value!r} must be {'> 0' if self.positive else '>= 0'} seconds", param, ctx)
            if self.finite and math.isinf(seconds):
                self.fail(f"{value!r} must be a finite number of seconds", param, ctx)
            if seconds < self.minimum:
                self.fail(f"{value!r} is below the minimum of {self.minimum:g}s: {self.why}", param, ctx)
            return seconds

    def common(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option(
            "--json", "as_json", is_flag=True, default=False, help="Machine-readable output (JSON) for scripts."
        )(fn)
        fn = click.option(
            "--url", metavar="URL", default=None,
            help="Lock store URL (default: $TXLOCK_URL, else the embedded SQLite store).",
        )(fn)
        return fn

    def resolve(ctx: click.Context, url: str | None, as_json: bool) -> tuple[_Out, str | None]:
        root = ctx.find_root().params
        use_json = as_json or bool(root.get("as_json"))
        out = _Out(use_json)
        ctx.find_root().meta["txlock.out"] = out
        return out, url if url is not None else root.get("url")

    timeout_opt = click.option(
        "--timeout", type=Seconds(), default=None, metavar="SECONDS",
        help="Give up after this long (0: one attempt; default: wait forever). Units: 500ms, 30s, 5m, 2h.",
    )

    epilog = (
        "\b\nExit codes: 0 ok, 1 refused, 2 usage, 69 store error, 75 timed out / held,\n"
        "76 lock lost, 78 bad URL / missing extra; `run` exits with the command's code.\n"
        "Docs: https://github.com/txlock/txlock/blob/main/docs/cli.md"
    )

    @click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=epilog)
    @click.option(
        "--url", metavar="URL", envvar="TXLOCK_URL", default=None,
        help="Lock store URL: sqlite:///path.db, file:///dir, redis://host, postgresql://... "
        "[env: TXLOCK_URL; default: the embedded SQLite store]",
    )
    @click.option("--json", "as_json", is_flag=True, default=False, help="Machine-readable output (JSON).")
    @click.version_option(txlock.__version__, "--version", "-V", prog_name="txlock", message="%(prog)s %(version)s")
    def cli(url: str | None, as_json: bool) -> None:
        """Named locks across processes and hosts: hold a lock around any command, manage locks."""

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @click.argument("command", nargs=-1, required=True, metavar="-- COMMAND [ARGS]...")
    @click.option("--holder", metavar="NAME", default=None, help="Holder name (default: host:pid:random).")
    @timeout_opt
    @click.option(
        "--ttl", type=Seconds(positive=True, finite=True, minimum=MIN_TTL, why=_MIN_TTL_WHY), default=None,
        metavar="SECONDS",
        help="Lease length (at least 1s), renewed in the background while the command runs (default: a hold bound "
        "to this txlock process).",
    )
    @click.option(
        "--kill-after", type=Seconds(finite=True), default=KILL_AFTER, show_default=True, metavar="SECONDS",
        help="If the lock is lost: seconds between SIGTERM and SIGKILL of the command.",
    )
    @common
    @click.pass_context
    def run(
        ctx: click.Context,
        *,
        key: str,
        command: tuple[str, ...],
        holder: str | None,
        timeout: float | None,
        ttl: float | None,
        kill_after: float,
        url: str | None,
        as_json: bool,
    ) -> int:
        """Wait for KEY, run COMMAND while holding it, release it when COMMAND ends.

        Exits with COMMAND's exit code. COMMAND gets TXLOCK_KEY, TXLOCK_HOLDER and
        TXLOCK_TOKEN (the fencing token) in its environment; signals sent to txlock are
        forwarded to it. Nothing but COMMAND's output goes to stdout.
        """
        out, url = resolve(ctx, url, as_json)
        return cmd_run(
            out, url=url, key=key, command=command, holder=holder, timeout=timeout, ttl=ttl, kill_after=kill_after
        )

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @click.option(
        "--ttl", type=Seconds(positive=True, finite=True, minimum=MIN_TTL, why=_MIN_TTL_WHY), required=True,
        metavar="SECONDS",
        help="How long the hold lasts (at least 1s) unless released (required: the hold outlives this command).",
    )
    @click.option("--holder", metavar="NAME", default=None, help="Holder name (default: host:pid:random).")
    @timeout_opt
    @common
    @click.pass_context
    def acquire(
        ctx: click.Context, *, key: str, ttl: float, holder: str | None, timeout: float | None, url: str | None,
        as_json: bool,
    ) -> int:
        """Take KEY for --ttl seconds (a detached hold); print the holder and fencing token."""
        out, url = resolve(ctx, url, as_json)
        return cmd_acquire(out, url=url, key=key, holder=holder, timeout=timeout, ttl=ttl)

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @click.option("--holder", metavar="NAME", required=True, help="The holder that took the lock.")
    @common
    @click.pass_context
    def release(ctx: click.Context, key: str, holder: str, url: str | None, as_json: bool) -> int:
        """Release KEY held by --holder (a no-op when KEY is not held)."""
        out, url = resolve(ctx, url, as_json)
        return cmd_release(out, url, key, holder)

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @timeout_opt
    @common
    @click.pass_context
    def wait(ctx: click.Context, key: str, timeout: float | None, url: str | None, as_json: bool) -> int:
        """Wait until KEY is free, without taking it (exit 0 when free, 75 on timeout)."""
        out, url = resolve(ctx, url, as_json)
        return cmd_wait(out, url, key, timeout)

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @common
    @click.pass_context
    def status(ctx: click.Context, key: str, url: str | None, as_json: bool) -> int:
        """Show who holds KEY, with which token, for how long, until when."""
        out, url = resolve(ctx, url, as_json)
        return cmd_status(out, url, key)

    @cli.command(name="ls", context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--prefix", metavar="PREFIX", default=None, help="Only keys starting with PREFIX.")
    @common
    @click.pass_context
    def ls_(ctx: click.Context, prefix: str | None, url: str | None, as_json: bool) -> int:
        """List the locks held now: key, holder, token, held for, expires in."""
        out, url = resolve(ctx, url, as_json)
        return cmd_ls(out, url, prefix)

    @cli.command(name="force-release", context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @click.option("--yes", "-y", is_flag=True, default=False, help="Do not ask for confirmation.")
    @common
    @click.pass_context
    def force_release(ctx: click.Context, key: str, yes: bool, url: str | None, as_json: bool) -> int:
        """Free KEY whoever holds it (asks first unless --yes; the holder learns at its next renewal)."""
        out, url = resolve(ctx, url, as_json)
        return cmd_force_release(out, url, key, yes)

    return cli


def _run_without_key(cli: click.Group, options: Sequence[str]) -> bool:
    """Whether ``options`` (the arguments before ``--``) are a ``run`` with no KEY.

    click would take the command's first word as the key (``txlock run -- echo hi`` would
    lock ``echo`` and run ``hi``).
    """
    import click

    run = cli.commands["run"]
    takes_value = {
        name for param in [*cli.params, *run.params]
        if isinstance(param, click.Option) and not param.is_flag for name in param.opts
    }
    words = iter(options)
    seen_run = False
    for word in words:
        if word in takes_value:
            next(words, None)
        elif word.startswith("-"):
            continue
        elif not seen_run:
            if word != "run":
                return False
            seen_run = True
        else:
            return False  # the key
    return seen_run


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``txlock`` console script; exits with one of the documented codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        import click  # lazy: click is optional
    except ImportError:
        _write(sys.stderr, _MISSING_CLICK + "\n")
        sys.exit(USAGE)
    # Errors are reported in JSON when --json appears before `--` (click has not parsed
    # anything yet when an early error is reported).
    options = args[: args.index("--")] if "--" in args else args
    out = _Out("--json" in options)
    logging.getLogger("txlock").addHandler(_LogHandler(out))
    cli = _cli()
    if "--" in args and _run_without_key(cli, options):
        out.error(CliError(USAGE, "usage", "txlock run needs a KEY before '--': txlock run KEY [OPTIONS] -- COMMAND "
                           "[ARGS]... (see 'txlock run --help')"))
        sys.exit(USAGE)
    try:
        code = cli.main(args, prog_name="txlock", standalone_mode=False)
    except CliError as err:
        out.error(err)
        code = err.code
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `txlock` (click >= 8.2)
            _write(sys.stderr, exc.format_message() + "\n")
            sys.exit(USAGE)
        where = exc.ctx.command_path if exc.ctx is not None else "txlock"
        message = exc.format_message().rstrip(".")
        if exc.ctx is not None and exc.ctx.info_name == "run" and "No such option" in message:
            message += " (put '--' before the command: txlock run KEY [OPTIONS] -- COMMAND [ARGS]...)"
        out.error(CliError(USAGE, "usage", f"{message} (see '{where} --help')"))
        code = USAGE
    except click.Abort as exc:
        # click turns Ctrl-C into Abort (after a newline on stderr); an EOF at a prompt is
        # a refusal, Ctrl-C is the shell's 130 as documented.
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            code = 128 + signal.SIGINT
        else:
            _write(sys.stderr, "\n")
            code = FAILED
    except click.ClickException as exc:
        out.error(CliError(exc.exit_code, "usage", exc.format_message()))
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    sys.exit(code if isinstance(code, int) else OK)


if __name__ == "__main__":  # pragma: no cover
    main()
