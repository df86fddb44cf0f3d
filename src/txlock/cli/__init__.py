"""The ``txlock`` command: hold a lock around any command, inspect and manage locks.

``flock(1)`` that works across processes and hosts, with leases, fencing tokens and
introspection, on every backend txlock has (``--url`` / ``$TXLOCK_URL``; without either,
the embedded default SQLite store in the user's state directory)::

    txlock run nightly-report -- ./make-report.sh     # wait, run while holding, release
    txlock ls                                         # what is held, by whom, for how long
    txlock top                                        # the same, live
    txlock doctor redis://cache:6379/0                # is this deployment safe for locks?

Commands: ``run``, ``acquire``, ``release``, ``wait``, ``status``, ``ls``, ``top``,
``force-release``, ``doctor``; ``txlock COMMAND --help`` documents each, ``docs/cli.md``
all of them. ``doctor`` exits 0 (all checks pass), 1 (warnings) or 2 (failures).

Exit codes (constants below): :data:`OK` 0, :data:`FAILED` 1 (the request was refused:
release by a holder that does not hold the lock, force-release declined),
:data:`USAGE` 2 (bad command line), :data:`BACKEND_ERROR` 69 (the store failed or cannot
be reached), :data:`TIMED_OUT` 75 (the lock stayed held for the whole ``--timeout``),
:data:`LOCK_LOST` 76 (``run``: the hold ended while the command ran; the command was
terminated), :data:`CONFIG` 78 (bad URL, unknown option, missing extra). ``run`` otherwise
exits with the command's own code (``128 + N`` when the command died of signal ``N``, 126 when
it cannot be executed, 127 when it is not found).

The package imports click, the standard library and the backend the URL names, nothing
more, so ``txlock run KEY -- true`` starts quickly.

Its modules: ``_exit_codes`` (the codes, :class:`CliError`), ``_output`` (text, JSON,
warnings, tables), ``_store`` (opening the store, library errors as exit codes),
``_waiting`` (the live waiting line, signals while waiting), ``_signals`` (handlers for a
block), ``_supervisor`` (the command ``run`` executes), ``_commands`` (what each command
does), ``_top`` and ``_top_model`` (``txlock top``: the live view, and its pure snapshot and
rate logic), ``_doctor_command`` (``txlock doctor``'s options and report; the checks are
the library's), ``_wiring`` (click's group and options, :func:`main`).
"""

from __future__ import annotations

from txlock.cli._exit_codes import (
    BACKEND_ERROR,
    CONFIG,
    FAILED,
    LOCK_LOST,
    OK,
    TIMED_OUT,
    USAGE,
)
from txlock.cli._exit_codes import NOT_EXECUTABLE as NOT_EXECUTABLE
from txlock.cli._exit_codes import NOT_FOUND as NOT_FOUND
from txlock.cli._wiring import main

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
