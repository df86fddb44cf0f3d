"""What each ``txlock`` command does, once click has parsed its command line.

Each ``cmd_*`` function takes the :class:`Output` and the parsed arguments and returns the
exit code; an error ends it with :class:`CliError`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import txlock
from txlock import _scheduler
from txlock.cli._exit_codes import FAILED, LOCK_LOST, NOT_EXECUTABLE, NOT_FOUND, OK, TIMED_OUT, USAGE, CliError
from txlock.cli._output import Output, duration, info_json, shown, table
from txlock.cli._store import open_store, translating_errors
from txlock.cli._supervisor import Child, forwarding_signals
from txlock.cli._waiting import Interrupted, WaitLine, interruptible, timed_out_error, wants_wait_line

__all__ = [
    "CHECK_INTERVAL",
    "cmd_acquire",
    "cmd_force_release",
    "cmd_ls",
    "cmd_release",
    "cmd_run",
    "cmd_status",
    "cmd_wait",
]

#: Seconds between two checks that a ``run`` hold without ``--ttl`` is still ours.
CHECK_INTERVAL = 1.0

_LOST_REASON = "it expired or was force-released"
_NOT_COUNTED = "not counted by this store (file and SQLite cannot see other processes' waiters)"


# ---------------------------------------------------------------------- run


def cmd_run(
    output: Output,
    *,
    url: str | None,
    keys: Sequence[str],
    command: Sequence[str],
    holder: str | None,
    timeout: float | None,
    ttl: float | None,
    kill_after: float,
) -> int:
    """``txlock run``: hold every key of ``keys`` while ``command`` runs; the command's exit code.

    Several keys are taken all or nothing, in the library's canonical order
    (:meth:`txlock.BaseLockManager.lock_many`), under one ``--timeout`` for the whole set.
    """
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not keys:
        raise CliError(USAGE, "usage", "no key to lock; use: txlock run KEY [KEY...] [OPTIONS] -- COMMAND [ARGS...]")
    if not command:
        raise CliError(USAGE, "usage", "no command to run; use: txlock run KEY [OPTIONS] -- COMMAND [ARGS...]")
    holder = txlock.default_holder() if holder is None else holder
    child = Child(keys[0], output, kill_after)
    with translating_errors(url):
        manager = open_store(url)
        hold = manager.lock_many(
            keys, holder, timeout=timeout, ttl=ttl, on_lost=lambda lease: _lose(child, lease.key, _LOST_REASON)
        )
        try:
            with interruptible(), _KeysWaitLine(manager, hold, wants_wait_line(output)):
                hold.__enter__()
        except txlock.LockTimeout as error:
            raise timed_out_error(manager, error.key, timeout) from None
        except Interrupted as stop:
            output.note(f"interrupted while waiting for {hold.waiting_for or hold.keys[0]!r}")
            return 128 + stop.signal_number
        failed = True
        try:
            with forwarding_signals(child):
                leases = hold.leases
                now = time.time()
                ended = [
                    key for key, lease in leases.items() if lease.expires_at is not None and lease.expires_at <= now
                ]
                if hold.lost or ended:
                    key = (list(hold.lost_keys) + ended)[0]
                    raise CliError(
                        LOCK_LOST, "lock_lost",
                        f"lock {key!r} ended before the command could start; the command was not run",
                    )
                try:
                    child.start(command, _environment(holder, leases))
                except FileNotFoundError:
                    raise CliError(NOT_FOUND, "not_found", f"command not found: {command[0]}") from None
                except PermissionError:
                    raise CliError(NOT_EXECUTABLE, "not_executable", f"cannot execute {command[0]}") from None
                check = None
                if ttl is None:
                    check = _scheduler.schedule(
                        lambda: _still_held(manager, hold, child), CHECK_INTERVAL,
                        name=f"txlock check {_keys_shown(hold.keys)}",
                    )
                try:
                    code = child.wait()
                finally:
                    if check is not None:
                        check.cancel()
            failed = False
        finally:
            try:
                hold.__exit__(Exception if failed else None, None, None)
            except txlock.LockLost as lost:
                _lose(child, lost.key, _LOST_REASON)
            except txlock.LockError as exception:
                # The hold ends anyway (with this process, or at its ttl).
                output.note(f"could not release {_keys_shown(hold.keys)}: {exception}")
    if child.lost_reason is not None:
        raise CliError(LOCK_LOST, "lock_lost", f"lock {child.key!r} was lost while the command ran "
                       f"({child.lost_reason}); the command was terminated")
    return code


def _environment(holder: str, leases: dict[str, txlock.Lease]) -> dict[str, str]:
    """The command's environment: ours, plus what it holds.

    ``TXLOCK_KEYS`` (a JSON list, in the order the keys were taken) and ``TXLOCK_TOKENS`` (a
    JSON object, key to fencing token) always; ``TXLOCK_KEY`` and ``TXLOCK_TOKEN`` when there
    is one key. JSON escapes every character the environment cannot carry (NUL, lone
    surrogates).
    """
    import json

    env = dict(
        os.environ,
        TXLOCK_HOLDER=holder,
        TXLOCK_KEYS=json.dumps(list(leases)),
        TXLOCK_TOKENS=json.dumps({key: lease.token for key, lease in leases.items()}),
    )
    for name in ("TXLOCK_KEY", "TXLOCK_TOKEN"):
        env.pop(name, None)  # a nested run of several keys must not pass its parent's on
    if len(leases) == 1:
        [(key, lease)] = leases.items()
        env.update(TXLOCK_KEY=key, TXLOCK_TOKEN=str(lease.token))
    return env


def _keys_shown(keys: Sequence[str]) -> str:
    """The keys of a run for a message: ``'a'`` or ``'a', 'b'``."""
    return ", ".join(repr(key) for key in keys)


def _lose(child: Child, key: str, reason: str) -> None:
    """The hold of ``key`` ended while the command runs: the first loss names its key."""
    if child.lost_reason is None:
        child.key = key
    child.lose(reason)


class _KeysWaitLine(WaitLine):
    """The waiting line of a run: it names the key being waited for now."""

    def __init__(self, manager: txlock.BaseLockManager, hold: txlock.MultiLockContext, enabled: bool) -> None:
        self._hold = hold
        super().__init__(manager, hold.keys[0], enabled)

    @property
    def key(self) -> str:
        """The key being waited for (the first one before the wait starts)."""
        return self._hold.waiting_for or self._hold.keys[0]

    @key.setter
    def key(self, value: str) -> None:
        pass  # WaitLine sets it once; it follows the acquisition instead


def _still_held(manager: txlock.BaseLockManager, hold: txlock.MultiLockContext, child: Child) -> bool:
    """Periodic check of a hold without ``--ttl`` (nothing renews it, so nothing else notices)."""
    try:
        blocks = hold.contexts
        leases = [(block, block.lease) for block in blocks.values()]
    except RuntimeError:  # the command has ended and the hold was released meanwhile
        return False
    for block, lease in leases:
        info = manager.inspect(lease.key)
        if info is not None and info.holder == lease.holder and info.token == lease.token:
            continue
        block.lost = True
        _lose(child, lease.key, "it was force-released" if info is None else f"it is now held by {shown(info.holder)}")
        return False
    return True


# ---------------------------------------------------------------------- the other commands


def cmd_acquire(
    output: Output, *, url: str | None, key: str, holder: str | None, timeout: float | None, ttl: float
) -> int:
    """``txlock acquire``: a detached hold that ends after ``ttl`` seconds unless released."""
    import shlex

    holder = txlock.default_holder() if holder is None else holder
    with translating_errors(url):
        manager = open_store(url)
        try:
            with interruptible(), WaitLine(manager, key, wants_wait_line(output)):
                lease = manager.acquire_lease(key, holder, timeout, ttl)
        except txlock.LockTimeout:
            lease = None
        except Interrupted as stop:
            return 128 + stop.signal_number
        if lease is None:
            raise timed_out_error(manager, key, timeout)
    if output.json:
        output.data({"key": key, "holder": holder, "token": lease.token, "expires_at": lease.expires_at, "ttl": ttl})
    else:
        output.text(f"key         {shown(key)}")
        output.text(f"holder      {shown(holder)}")
        output.text(f"token       {lease.token}")
        output.text(f"expires in  {duration(ttl)}")
        output.note(f"release with: txlock release {shlex.quote(key)} --holder {shlex.quote(holder)}")
    return OK


def cmd_release(output: Output, url: str | None, key: str, holder: str) -> int:
    """``txlock release``: end a hold of ``holder``."""
    with translating_errors(url):
        manager = open_store(url)
        info = manager.inspect(key)
        try:
            manager.release_lock(key, holder)
        except txlock.NotLockHolder as exception:
            other = exception.actual_holder
            message = f"lock {key!r} is held by {shown(other or '?')}, not by {shown(holder)}; nothing released"
            if output.json:
                output.data({"key": key, "holder": holder, "released": False, "held_by": other})
                return FAILED
            raise CliError(FAILED, "not_holder", message) from None
    released = info is not None and info.holder == holder
    if output.json:
        output.data({"key": key, "holder": holder, "released": released, "held_by": None})
    elif released:
        output.note(f"released {key!r}")
    else:
        output.note(f"lock {key!r} was not held; nothing to release")
    return OK


def cmd_wait(output: Output, url: str | None, key: str, timeout: float | None) -> int:
    """``txlock wait``: wait until ``key`` is free, without taking it."""
    started = time.monotonic()
    with translating_errors(url):
        manager = open_store(url)
        try:
            with interruptible(), WaitLine(manager, key, wants_wait_line(output)):
                free = manager.wait_for_lock(key, timeout)
        except Interrupted as stop:
            return 128 + stop.signal_number
        waited = round(time.monotonic() - started, 3)
        if output.json:
            output.data({"key": key, "free": free, "waited": waited})
            return OK if free else TIMED_OUT
        if not free:
            raise timed_out_error(manager, key, timeout)
    return OK


def cmd_status(output: Output, url: str | None, key: str) -> int:
    """``txlock status``: who holds ``key``, since when, until when."""
    with translating_errors(url):
        info = open_store(url).inspect(key)
    if output.json:
        output.data({"key": key, "held": False} if info is None else {"held": True, **info_json(info)})
        return OK
    if info is None:
        output.text(f"{shown(key)}: free")
        return OK
    now = time.time()
    expires = (
        "when released, or when its process exits"
        if info.expires_at is None
        else duration(info.expires_at - now)
    )
    output.text(f"{shown(key)}: held")
    output.text(f"  holder      {shown(info.holder)}")
    output.text(f"  token       {info.token}")
    output.text(f"  held for    {duration(now - info.acquired_at)}")
    output.text(f"  expires in  {expires}")
    output.text(f"  waiters     {_NOT_COUNTED if info.waiters is None else info.waiters}")
    return OK


def cmd_ls(output: Output, url: str | None, prefix: str | None) -> int:
    """``txlock ls``: every lock held now, as a table."""
    with translating_errors(url):
        locks = open_store(url).list_locks(prefix)
    now = time.time()
    if output.json:
        output.data([info_json(info, now) for info in locks])
        return OK
    if not locks:
        output.note("no locks held" + ("" if prefix is None else f" with prefix {prefix!r}"))
        return OK
    # A WAITERS column where the store counts its waiters (memory, Redis, PostgreSQL).
    counted = any(info.waiters is not None for info in locks)
    rows = [
        (
            shown(info.key),
            shown(info.holder),
            str(info.token),
            duration(now - info.acquired_at),
            duration(None if info.expires_at is None else info.expires_at - now),
            *([] if not counted else ["-" if info.waiters is None else str(info.waiters)]),
        )
        for info in locks
    ]
    header = ("KEY", "HOLDER", "TOKEN", "HELD FOR", "EXPIRES IN", *(["WAITERS"] if counted else []))
    for line in table(header, rows, right=(2, 3, 4, 5)):
        output.text(line)
    return OK


def cmd_force_release(output: Output, url: str | None, key: str, yes: bool) -> int:
    """``txlock force-release``: free ``key`` whoever holds it, after confirmation."""
    with translating_errors(url):
        manager = open_store(url)
        info = manager.inspect(key)
        if info is None:
            if output.json:
                output.data({"key": key, "released": False, "holder": None, "token": None})
            else:
                output.note(f"lock {key!r} is not held; nothing to release")
            return OK
        if not yes:
            if not sys.stdin.isatty():
                raise CliError(
                    USAGE, "usage", f"refusing to force-release {key!r} without confirmation: stdin is not a "
                    "terminal; pass --yes"
                )
            import click  # lazy: click is optional

            question = (
                f"force-release {key!r}, held by {shown(info.holder)} (token {info.token}) for "
                f"{duration(time.time() - info.acquired_at)}?"
            )
            if not click.confirm(question, default=False, err=True):
                raise CliError(FAILED, "declined", f"lock {key!r} left alone")
        released = manager.force_release(key)
    if output.json:
        output.data({"key": key, "released": released, "holder": info.holder, "token": info.token})
    elif released:
        output.note(f"force-released {key!r} (was held by {shown(info.holder)}, token {info.token})")
    else:
        output.note(f"lock {key!r} was freed meanwhile; nothing to release")
    return OK
