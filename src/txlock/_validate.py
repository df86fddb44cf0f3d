"""Argument checks done once, above every backend, before any state changes."""

from __future__ import annotations

import math
from numbers import Real

__all__ = ["check_holder", "check_hold_timeout", "check_key", "check_timeout", "encode"]


def check_key(key: object, limit: int | None = None, backend: str = "this backend") -> str:
    """Return ``key`` if it is a ``str`` of at most ``limit`` characters.

    Raises ``TypeError`` for another type and ``ValueError`` for a key that is too long,
    naming the limit and what to do instead.
    """
    if type(key) is not str and not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}: {key!r}")
    if limit is not None and len(key) > limit:
        raise ValueError(
            f"key is {len(key)} characters long; {backend} accepts keys of at most {limit} "
            f"characters (max_key_length). Use a digest of a longer key instead, e.g. "
            f"hashlib.sha256(key.encode()).hexdigest()"
        )
    return key


def check_holder(holder: object, limit: int | None = None, backend: str = "this backend") -> str:
    """Return ``holder`` if it is a ``str`` of at most ``limit`` characters.

    Raises ``TypeError`` for another type and ``ValueError`` for a holder that is too long.
    """
    if type(holder) is not str and not isinstance(holder, str):
        raise TypeError(f"holder must be a str, not {type(holder).__name__}: {holder!r}")
    if limit is not None and len(holder) > limit:
        raise ValueError(
            f"holder is {len(holder)} characters long; {backend} accepts holders of at most "
            f"{limit} characters (max_holder_length)"
        )
    return holder


def check_timeout(value: object, name: str) -> float | None:
    """Validate a wait timeout: ``None`` (forever) or a number ``>= 0`` (``inf`` allowed)."""
    if value is None:
        return None
    kind = type(value)
    if kind is float or kind is int:  # the common case, without the slow ABC check
        seconds = float(value)  # type: ignore[arg-type]
        if seconds >= 0:  # False for NaN
            return seconds
        raise ValueError(f"{name} must be >= 0 seconds or None, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{name} must be a number of seconds or None, not {type(value).__name__}: {value!r}"
        )
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0 seconds or None, got {value!r}")
    return seconds


def check_hold_timeout(value: object, name: str = "hold_timeout") -> float | None:
    """Validate a hold timeout: ``None`` (held until released) or a finite number ``> 0``."""
    if value is None:
        return None
    if type(value) is float and 0.0 < value < math.inf:  # the common case, in one test
        return value
    try:
        seconds = check_timeout(value, name)
    except ValueError:
        seconds = None  # negative or NaN: the same rule, the same message as 0 and inf
    if seconds is None or seconds == 0 or math.isinf(seconds):
        raise ValueError(
            f"{name} must be a finite number of seconds > 0, or None for a hold that lasts "
            f"until released (or until its process dies); got {value!r}"
        )
    return seconds


def encode(text: str) -> bytes:
    """Encode a key or holder to bytes without loss, lone surrogates included."""
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    """Inverse of :func:`encode`."""
    return data.decode("utf-8", "surrogatepass")
