"""txlock: named locks for transaction records, from one process to many hosts.

Every manager implements Prefect's ``LockManager`` protocol and a richer API (leases with
fencing tokens, context managers that renew in the background, introspection)::

    import txlock

    locks = txlock.from_url("sqlite:///tmp/locks.db")   # or memory://, file://, redis://, postgresql://
    with locks.lock("reports:2026-11", ttl=30) as held:
        print("holding with fencing token", held.token)

Everything but the exceptions is imported on first use, so ``import txlock`` stays cheap
and loads no optional dependency.
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

if TYPE_CHECKING:
    from txlock._context import LockContext, default_holder
    from txlock._manager import BaseLockManager
    from txlock._multi import MultiLockContext
    from txlock._observe import EVENT_KINDS, LockEvent, Observer, ObserverLike, add_observer, remove_observer
    from txlock._types import Capabilities, Lease, LockInfo
    from txlock._url import default_url, from_url, register_scheme, schemes
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

#: Where each public name other than the errors lives. They are imported on first use
#: (PEP 562), so a process imports only what it uses: ``MemoryLockManager()`` loads no URL
#: parsing, ``from_url`` only the backend its URL names, none of them ``lock()`` blocks.
_LAZY = {
    "BaseLockManager": "txlock._manager",
    "Capabilities": "txlock._types",
    "EVENT_KINDS": "txlock._observe",
    "FileSystemLockManager": "txlock.backends.file",
    "Lease": "txlock._types",
    "LockContext": "txlock._context",
    "LockEvent": "txlock._observe",
    "LockInfo": "txlock._types",
    "MemoryLockManager": "txlock.backends.memory",
    "MultiLockContext": "txlock._multi",
    "Observer": "txlock._observe",
    "ObserverLike": "txlock._observe",
    "PostgresLockManager": "txlock.backends.postgres",
    "RedisLockManager": "txlock.backends.redis",
    "SQLiteLockManager": "txlock.backends.sqlite",
    "add_observer": "txlock._observe",
    "default_holder": "txlock._context",
    "default_url": "txlock._url",
    "from_url": "txlock._url",
    "register_scheme": "txlock._url",
    "remove_observer": "txlock._observe",
    "schemes": "txlock._url",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'txlock' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names (the lazy backend classes included), not the helpers of this module.
    return sorted(__all__)
