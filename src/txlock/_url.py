"""``txlock.from_url``: pick a backend by URL, importing only the one that is used."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from txlock._errors import ConfigurationError, MissingDependency
from txlock._manager import BaseLockManager, parse_bool, parse_seconds

__all__ = ["default_url", "from_url", "register_scheme", "schemes"]

#: scheme -> (module, class name, the extra that provides its dependencies or "")
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "memory": ("txlock.backends.memory", "MemoryLockManager", ""),
    "file": ("txlock.backends.file", "FileSystemLockManager", ""),
    "sqlite": ("txlock.backends.sqlite", "SQLiteLockManager", ""),
    "redis": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "rediss": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "unix": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "redis+cluster": ("txlock.backends.redis", "RedisLockManager", "redis"),
    "postgresql": ("txlock.backends.postgres", "PostgresLockManager", "postgres"),
    "postgres": ("txlock.backends.postgres", "PostgresLockManager", "postgres"),
}

#: Options every URL accepts, handled by the base class.
COMMON_OPTIONS = ("acquire_timeout", "raise_on_timeout")


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
    from txlock.backends.sqlite import default_path

    return f"sqlite:///{default_path()}"


def common_options(options: Mapping[str, str], allowed: tuple[str, ...]) -> dict[str, Any]:
    """Check option names against ``allowed`` + the common ones; parse the common ones."""
    unknown = sorted(set(options) - set(allowed) - set(COMMON_OPTIONS))
    if unknown:
        accepted = ", ".join(sorted(set(allowed) | set(COMMON_OPTIONS)))
        raise ConfigurationError(f"unknown option(s) {', '.join(unknown)}; this backend accepts: {accepted}")
    parsed: dict[str, Any] = {}
    if "acquire_timeout" in options:
        parsed["acquire_timeout"] = parse_seconds("acquire_timeout", options["acquire_timeout"])
    if "raise_on_timeout" in options:
        parsed["raise_on_timeout"] = parse_bool("raise_on_timeout", options["raise_on_timeout"])
    return parsed


def local_path(url: str, label: str, example: str) -> str:
    """The absolute path named by a ``scheme:///absolute/path`` URL of a local backend."""
    from urllib.parse import unquote

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(
            f"{label} URL {url!r} names a host ({parts.netloc!r}); use {example} (three slashes)"
        )
    path = unquote(parts.path)
    if not path or path == "/":
        raise ConfigurationError(f"{label} URL {url!r} has no path; use {example}")
    if not path.startswith("/"):
        raise ConfigurationError(f"{label} URL {url!r} needs an absolute path; use {example}")
    return path


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
    if url is None:
        url = default_url()
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigurationError(
            f"{_redact(url)!r} is not a URL; use one of: {', '.join(s + '://' for s in schemes())}"
        )
    cls = manager_class(scheme)
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    query.update({name: _text(value) for name, value in options.items()})
    return cls._from_parsed(url, query)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


redact = _redact
