"""What the ready observers share: histogram buckets, and the error for a missing package.
Imports no optional dependency."""

from __future__ import annotations

from txlock._errors import MissingDependency
from txlock._observe import LockEvent

__all__ = ["HOLD_BUCKETS", "WAIT_BUCKETS", "error_type", "missing_dependency"]

#: Bucket bounds (seconds) of the wait histograms: from an uncontended in-process grant
#: (well under a millisecond) to a five-minute queue.
WAIT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)
#: Bucket bounds (seconds) of the hold histograms: from a millisecond to an hour.
HOLD_BUCKETS: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600)


def missing_dependency(module: str, package: str, extra: str, cause: ImportError) -> MissingDependency:
    """The error for an observer ``module`` whose ``package`` cannot be imported."""
    return MissingDependency(f"{module} needs {package}: install txlock[{extra}] ({cause})")


def error_type(event: LockEvent) -> str:
    """The class name of ``event``'s error: a bounded label (``unknown`` without one)."""
    return type(event.error).__name__ if event.error is not None else "unknown"
