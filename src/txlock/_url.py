"""``txlock.from_url``: pick a backend by URL, importing only the one that is used."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from txlock._errors import ConfigurationError, MissingDependency
from txlock._options import default_sqlite_path, hide_password, redact

if TYPE_CHECKING:
    from txlock._manager import BaseLockManager

__all__ = ["check_url_form", "default_url", "from_url", "redact", "register_scheme", "schemes"]

#: scheme -> (module, class name, the extra that provides its dependencies or "")
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "memory": ("txlock.backends.memory", "MemoryLockManager", ""),
    "file": ("txlock.backends.file", "FileSystemLockManager", ""),
    "sqlite": ("txlock.backends.sqlite", "SQLiteLockManager", ""),
    "redis": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "rediss": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "unix": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "redis+cluster": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "redis+sentinel": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "rediss+sentinel": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "postgresql": ("txlock.backends.postgres", "PostgresLockManager", "postgres"),
    "postgres": ("txlock.backends.postgres", "PostgresLockManager", "postgres"),
}

#: Schemes whose URL names a path on this host: ``scheme:///absolute/path`` (three slashes).
_PATH_SCHEMES = frozenset({"file", "sqlite", "unix"})
#: The path of a host-less network URL that is really a ``host:port`` (a slash too many).
_HOST_LIKE_PATH = re.compile(r"/+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]+(/|$)")
def check_url_form(url: str) -> None:
    """Refuse a URL whose slashes change its meaning, naming the URL that was meant.

    ``redis:/prod:6379`` (one slash) would otherwise connect to this machine, and
    ``redis:///prod:6379`` (three) too: each host would get a lock of its own.
    """
    scheme, colon, rest = url.partition(":")
    if not colon or not scheme or "/" in scheme or "=" in scheme:
        return  # not a URL (a libpq conninfo string, a bare path): the backend decides
    kind = scheme.lower()
    if not rest.startswith("//"):
        if kind in _PATH_SCHEMES and not rest.startswith("/"):
            return  # scheme:relative/path: the backend asks for an absolute path
        body = rest.lstrip("/")
        meant = f"{scheme}:///{body}" if kind in _PATH_SCHEMES else f"{scheme}://{body}"
        raise ConfigurationError(
            f"{hide_password(url)!r} is missing the '//' after {scheme + ':'!r}; "
            f"did you mean {hide_password(meant)!r}?"
        )
    if kind in _PATH_SCHEMES or kind == "memory":
        return
    parts = urlsplit(url)
    if not parts.netloc and _HOST_LIKE_PATH.match(parts.path):
        meant = f"{scheme}://{url.split(':', 1)[1].lstrip('/')}"
        raise ConfigurationError(
            f"{hide_password(url)!r} has no host, and its path looks like one (a URL without a host "
            f"means this machine); did you mean {hide_password(meant)!r}?"
        )


def register_scheme(scheme: str, target: str, extra: str = "") -> None:
    """Serve ``scheme://`` URLs with the manager class ``target`` (``"module:Class"``)."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ConfigurationError(f"target {target!r} must look like 'package.module:ClassName'")
    _REGISTRY[scheme.lower()] = (module, name, extra)


def schemes() -> list[str]:
    """The URL schemes :func:`from_url` accepts."""
    return sorted(_REGISTRY)


def default_url() -> str:
    """The URL used when none is given: ``$TXLOCK_URL``, else a SQLite file in the user's
    state directory (``platformdirs.user_state_dir("txlock")``)."""
    env = os.environ.get("TXLOCK_URL", "").strip()
    if env:
        return env
    return f"sqlite:///{default_sqlite_path()}"


def manager_class(scheme: str) -> type[BaseLockManager]:
    """Import and return the manager class serving ``scheme``."""
    try:
        module_name, class_name, extra = _REGISTRY[scheme.lower()]
    except KeyError:
        raise ConfigurationError(
            f"unknown URL scheme {scheme!r}; use one of: {', '.join(s + '://' for s in schemes())}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra and module_name not in str(exc):
            raise MissingDependency(
                f"{scheme}:// URLs need optional dependencies: install txlock[{extra}] ({exc})"
            ) from exc
        raise
    cls: type[BaseLockManager] = getattr(module, class_name)
    return cls


def from_url(url: str | None = None, **options: Any) -> BaseLockManager:
    """Build a lock manager from a URL.

    ========================================  ============================================
    URL                                       manager
    ========================================  ============================================
    ``memory://`` / ``memory://NAME``         :class:`MemoryLockManager` (this process)
    ``file:///path/to/dir``                   :class:`FileSystemLockManager` (this host)
    ``sqlite:///path/to/locks.db``            :class:`SQLiteLockManager` (this host)
    ``redis://`` ``rediss://`` ``unix://``    :class:`RedisLockManager` (any host)
    ``postgresql://``                         :class:`PostgresLockManager` (any host)
    ========================================  ============================================

    With no URL, ``$TXLOCK_URL`` is used, else the embedded default: a SQLite file in the
    user's state directory. Query parameters set options; every backend accepts
    ``acquire_timeout`` (seconds) and ``raise_on_timeout`` (``true``/``false``). Keyword
    ``options`` override the URL's. Unknown schemes and options raise
    :class:`~txlock.ConfigurationError` naming what is accepted.
    """
    if url is not None:
        return _from_url(url, options)
    try:
        return _from_url(default_url(), options)
    except ConfigurationError as exc:
        if not os.environ.get("TXLOCK_URL", "").strip():
            raise  # the embedded default's own error
        raise ConfigurationError(f"$TXLOCK_URL: {exc}") from exc


def _from_url(url: str, options: Mapping[str, Any]) -> BaseLockManager:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigurationError(
            f"{redact(url)!r} is not a URL; use one of: {', '.join(s + '://' for s in schemes())}"
        )
    cls = manager_class(scheme)
    check_url_form(url)
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    query.update({name: _text(value) for name, value in options.items()})
    return cls._from_parsed(url, query)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
