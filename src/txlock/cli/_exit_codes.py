"""The exit codes of the ``txlock`` command, and the error that ends a command with one."""

from __future__ import annotations

__all__ = [
    "BACKEND_ERROR",
    "CONFIG",
    "FAILED",
    "LOCK_LOST",
    "NOT_EXECUTABLE",
    "NOT_FOUND",
    "OK",
    "TIMED_OUT",
    "USAGE",
    "CliError",
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


class CliError(Exception):
    """An error reported as one line on stderr, ending the command with ``code``."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message
