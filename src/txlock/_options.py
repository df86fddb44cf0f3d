"""Configuration shared by every backend: URL options, secrets kept out of text, default paths.

Everything here is pure (no I/O but creating the default state directory) and imports
nothing else of txlock but the errors, so ``_url.py`` and every backend can use it without
an import circle.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from txlock._errors import ConfigurationError

__all__ = [
    "COMMON_OPTIONS",
    "check_liveness",
    "common_options",
    "default_sqlite_path",
    "hide_password",
    "local_path",
    "merge_options",
    "parse_bool",
    "parse_seconds",
    "redact",
]

#: Options every URL accepts, handled by the base class.
COMMON_OPTIONS = ("acquire_timeout", "raise_on_timeout")

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_PASSWORD = re.compile(r"(?<=:)[^:@/]*(?=@)")


def parse_bool(name: str, value: str) -> bool:
    """Parse a boolean URL option, naming the option and the accepted words on error."""
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigurationError(f"option {name}={value!r} is not a boolean; use true or false")


def parse_seconds(name: str, value: str, *, positive: bool = False) -> float | None:
    """Parse a number-of-seconds URL option (``none`` allowed for 'no limit')."""
    if value.strip().lower() in {"", "none", "null"}:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(f"option {name}={value!r} is not a number of seconds") from None
    if math.isnan(seconds) or seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(f"option {name}={value!r} must be {bound} seconds")
    return seconds


def check_liveness(value: object, name: str = "liveness") -> float:
    """Validate the seconds a process-bound hold outlives its process's last heartbeat."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name}={value!r} must be a finite number of seconds > 0")
    return float(value)


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


def merge_options(given: Mapping[str, Any], in_url: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments and the options found in a URL's query, as one mapping.

    A keyword argument that contradicts the URL is an error; one that repeats it is not.
    """
    merged = dict(given)
    for name, value in in_url.items():
        if merged.get(name) is not None and merged[name] != value:
            raise ConfigurationError(f"{name}={merged[name]!r} contradicts {name}={value!r} in the URL")
        merged[name] = value
    return merged


def local_path(url: str, label: str, example: str) -> str:
    """The absolute path named by a ``scheme:///absolute/path`` URL of a local backend."""
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


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; a URL that cannot be parsed
    is returned with anything that looks like a password hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return hide_password(url)
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def hide_password(text: str) -> str:
    """``text`` (a URL or a message quoting one) with every ``:password@`` shown as ``:***@``."""
    return _PASSWORD.sub("***", text) if "@" in text else text


def default_sqlite_path() -> str:
    """The embedded default store: ``platformdirs.user_state_dir("txlock")/locks.db``.

    The directory is created (mode 0700) if missing.
    """
    import platformdirs  # here: only the default store needs it

    directory = platformdirs.user_state_dir("txlock")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, "locks.db")
