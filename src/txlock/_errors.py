"""The exceptions txlock raises.

Every error derives from :class:`LockError`, so ``except txlock.LockError`` catches
everything the library raises on purpose. Where a builtin exception carries the same
meaning, the txlock class also derives from it, so code written against Prefect's
managers (which raise ``ValueError`` and return ``False``) keeps working::

    LockError
    ├── LockTimeout(LockError, TimeoutError)      a wait ran out (lock(), raising mode)
    ├── NotLockHolder(LockError, ValueError)      release by a holder that does not hold
    ├── LockLost(LockError)                       a hold ended while its owner still ran
    ├── ConfigurationError(LockError, ValueError) bad URL, option or argument value
    │   └── MissingDependency(ConfigurationError, ImportError)
    └── BackendError(LockError)                   the store failed or is unreachable
        ├── BackendUnavailable(BackendError, ConnectionError)
        └── CorruptRecord(BackendError)           a record the backend cannot read

Driver exceptions (redis-py, psycopg, sqlite3, OSError) are translated at one place per
backend and chained with ``raise ... from``, so the original stays reachable through
``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "CorruptRecord",
    "LockError",
    "LockLost",
    "LockTimeout",
    "MissingDependency",
    "NotLockHolder",
    "NotSent",
]


class LockError(Exception):
    """Base class of every exception txlock raises on purpose."""


class LockTimeout(LockError, TimeoutError):
    """A lock could not be acquired within the allowed time.

    Attributes:
        key: the lock's key.
        timeout: the time waited, in seconds.
        holder: who held the lock when the wait gave up, if known.
    """

    def __init__(self, key: str, timeout: float | None, holder: str | None = None) -> None:
        self.key = key
        self.timeout = timeout
        self.holder = holder
        within = "at once" if not timeout else f"within {timeout:g}s"
        held = f" (held by {holder!r})" if holder is not None else ""
        super().__init__(f"could not acquire lock {key!r} {within}{held}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.key, self.timeout, self.holder))


class NotLockHolder(LockError, ValueError):
    """``release_lock`` was called by a holder that does not hold the lock.

    The message is exactly Prefect's, which its test-suite matches.
    """

    def __init__(self, key: str, holder: str, actual_holder: str | None = None) -> None:
        self.key = key
        self.holder = holder
        self.actual_holder = actual_holder
        super().__init__(f"No lock held by {holder} for transaction with key {key}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.key, self.holder, self.actual_holder))


class LockLost(LockError):
    """A hold ended (expired, broken or force-released) while its owner was still inside.

    Raised when a ``lock()`` / ``alock()`` block exits after its lease was lost, and by
    ``renew()`` when there is nothing left to renew.
    """

    def __init__(self, key: str, holder: str, reason: str = "the hold was lost") -> None:
        self.key = key
        self.holder = holder
        self.reason = reason
        super().__init__(f"lock {key!r} held by {holder!r} was lost: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.key, self.holder, self.reason))


class ConfigurationError(LockError, ValueError):
    """An argument, option or URL is not acceptable; the message says what to change."""


class MissingDependency(ConfigurationError, ImportError):
    """A backend needs an optional dependency that is not installed."""


class BackendError(LockError):
    """The lock store failed. The message names the store and the cause."""


class BackendUnavailable(BackendError, ConnectionError):
    """The lock store could not be reached. The next call tries again."""


class NotSent(BackendUnavailable):
    """Nothing was sent to the store: every connection this process may use stayed busy
    until the call's deadline. Unlike other :class:`BackendUnavailable` errors the outcome
    is known (the store was not asked), so an acquire or wait that meets it past its
    deadline ends as a plain timeout; txlock raises it only where no deadline applies."""


class CorruptRecord(BackendError):
    """A lock record exists but cannot be read; the message names it and what to do."""
