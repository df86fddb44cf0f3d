"""State that belongs to one process: made on first use, shared by its managers, reset at fork.

Every backend keeps some (the memory tables, open descriptors and directory watches,
SQLite connections, Redis listeners and heartbeats, PostgreSQL connection stores). A
child made by ``fork`` inherits a copy of it with none of the threads that served it and
mutexes that another thread may have held at the moment of the fork, so each table here
either resets its values in the child or forgets them (the child makes its own on first
use).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_tables: weakref.WeakSet[PerProcess[object, object]] = weakref.WeakSet()


class PerProcess(Generic[K, V]):
    """A table of per-process objects, by configuration.

    Args:
        after_fork: called on each value in a child made by ``fork``; return ``True`` to
            keep the value (it has reset itself), ``False`` to forget it. ``None``: forget
            every value.
    """

    def __init__(self, after_fork: Callable[[V], bool] | None = None) -> None:
        self._mutex = threading.Lock()
        self._values: dict[K, V] = {}
        self._after_fork = after_fork
        _tables.add(self)  # type: ignore[arg-type]

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value for ``key``, made by ``make`` on first use in this process."""
        value = self._values.get(key)
        if value is None:
            with self._mutex:
                value = self._values.get(key)
                if value is None:
                    value = self._values[key] = make()
        return value

    def pop(self, key: K) -> V | None:
        """Forget the value for ``key`` and return it (``None`` if there was none)."""
        with self._mutex:
            return self._values.pop(key, None)

    def values(self) -> list[V]:
        """The values of this process (a copy)."""
        with self._mutex:
            return list(self._values.values())

    def _reset_in_child(self) -> None:
        self._mutex = threading.Lock()  # another thread may have held it at fork time
        keep = self._after_fork
        if keep is None:
            self._values = {}
        else:
            self._values = {key: value for key, value in self._values.items() if keep(value)}


def _after_fork_in_child() -> None:
    for table in list(_tables):
        table._reset_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
