"""Opening the lock store, and the one place where library errors become exit codes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import txlock
from txlock._url import redact
from txlock.cli._exit_codes import BACKEND_ERROR, CONFIG, LOCK_LOST, TIMED_OUT, USAGE, CliError

__all__ = ["cli_error_for", "open_store", "translating_errors"]

_RECONNECTS = re.compile(r"[.;]? [Tt]he next call reconnects\.?")


def _one_line(exception: BaseException) -> str:
    """An error message on one line (server messages may span several)."""
    return " ".join(str(exception).split())


def cli_error_for(exception: BaseException, url: str | None) -> CliError | None:
    """The exit code and one-line message of a library error; ``None`` when it is not one."""
    store = "the default store" if url is None else repr(redact(url))
    if isinstance(exception, txlock.MissingDependency):
        return CliError(CONFIG, "missing_dependency", f"{exception}; then run the command again")
    if isinstance(exception, txlock.ConfigurationError):
        return CliError(CONFIG, "configuration", f"bad lock store URL {store}: {exception}")
    # Backend messages name the store (password redacted) and the cause.
    if isinstance(exception, txlock.BackendUnavailable):
        # The library's advice about the next call does not apply to a command that ends.
        text = _RECONNECTS.sub("", _one_line(exception))
        advice = "(does --url / $TXLOCK_URL point at it?)"
        return CliError(BACKEND_ERROR, "backend_unavailable", f"cannot reach the lock store: {text} {advice}")
    if isinstance(exception, txlock.BackendError):
        return CliError(BACKEND_ERROR, "backend_error", f"lock store error: {_one_line(exception)}")
    if isinstance(exception, txlock.LockLost):
        return CliError(LOCK_LOST, "lock_lost", str(exception))
    if isinstance(exception, txlock.LockTimeout):
        return CliError(TIMED_OUT, "timed_out", str(exception))
    if isinstance(exception, (ValueError, TypeError)):
        return CliError(USAGE, "usage", str(exception))
    return None


@contextmanager
def translating_errors(url: str | None) -> Iterator[None]:
    """Re-raise the library errors of the block as :class:`CliError` (see :func:`cli_error_for`)."""
    try:
        yield
    except CliError:
        raise
    except Exception as exception:
        error = cli_error_for(exception, url)
        if error is None:
            raise
        raise error from exception


def open_store(url: str | None) -> txlock.BaseLockManager:
    """The manager of the store ``url`` names (``None``: the embedded default store)."""
    try:
        return txlock.from_url(url)
    except txlock.MissingDependency:
        raise
    except ImportError as exception:
        if url is None:
            raise CliError(
                CONFIG, "configuration", f"the embedded default store is not available in this install ({exception}); "
                "pass --url or set TXLOCK_URL (e.g. file:///tmp/txlock)"
            ) from exception
        raise CliError(
            CONFIG, "configuration", f"the backend for {redact(url)!r} cannot be loaded ({exception}); "
            "reinstall txlock or use another URL"
        ) from exception
