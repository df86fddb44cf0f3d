"""txlock: named locks for transaction records, from one process to many hosts.

Every manager implements Prefect's ``LockManager`` protocol and a richer API (leases with
fencing tokens, context managers that renew in the background, introspection)::

    import txlock

    locks = txlock.from_url("sqlite:///tmp/locks.db")   # or memory://, file://, redis://, postgresql://
    with locks.lock("reports:2026-11", ttl=30) as held:
        print("holding with fencing token", held.token)

The backend classes are imported on first use, so ``import txlock`` stays cheap and loads
no optional dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txlock._errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    CorruptRecord,
    LockError,
    LockLost,
    LockTimeout,
    MissingDependency,
    NotLockHolder,
    NotSent,
)
from txlock._manager import BaseLockManager, LockContext, default_holder
from txlock._multi import MultiLockContext
from txlock._observe import EVENT_KINDS, LockEvent, Observer, ObserverLike, add_observer, remove_observer
from txlock._types import Capabilities, Lease, LockInfo
from txlock._url import default_url, from_url, register_scheme, schemes

if TYPE_CHECKING:
    from txlock.backends.file import FileSystemLockManager
    from txlock.backends.memory import MemoryLockManager
    from txlock.backends.postgres import PostgresLockManager
    from txlock.backends.redis import RedisLockManager
    from txlock.backends.sqlite import SQLiteLockManager

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "BaseLockManager",
    "Capabilities",
    "ConfigurationError",
    "CorruptRecord",
    "EVENT_KINDS",
    "FileSystemLockManager",
    "Lease",
    "LockContext",
    "LockError",
    "LockEvent",
    "LockInfo",
    "LockLost",
    "LockTimeout",
    "MemoryLockManager",
    "MissingDependency",
    "MultiLockContext",
    "NotLockHolder",
    "NotSent",
    "Observer",
    "ObserverLike",
    "PostgresLockManager",
    "RedisLockManager",
    "SQLiteLockManager",
    "__version__",
    "add_observer",
    "default_holder",
    "default_url",
    "from_url",
    "register_scheme",
    "remove_observer",
    "schemes",
]

_LAZY = {
    "MemoryLockManager": "txlock.backends.memory",
    "FileSystemLockManager": "txlock.backends.file",
    "SQLiteLockManager": "txlock.backends.sqlite",
    "RedisLockManager": "txlock.backends.redis",
    "PostgresLockManager": "txlock.backends.postgres",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'txlock' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names (the lazy backend classes included), not the helpers of this module.
    return sorted(__all__)
