"""Sizing of the lab's scenarios and the figures they report.

* :func:`long_run` / :func:`scaled` / :func:`minutes`: how big a run is. The default is
  the short run CI does; ``TXLOCK_LAB_SCALE=long`` (set by ``scripts/lab``) asks for the
  long one and ``TXLOCK_LAB_MINUTES`` caps each long scenario's time.
* :func:`record`: a scenario's figures (acquisitions, faults injected, overlaps, token
  regressions, recovery times, loss signals, ...). When ``TXLOCK_LAB_REPORT`` names a
  directory, each call appends one JSON line to ``<dir>/results.jsonl``; ``scripts/lab``
  turns those lines into ``RELIABILITY.md``. Without it, nothing is written.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["long_run", "minutes", "percentiles", "record", "scaled"]


def long_run() -> bool:
    """``True`` when ``scripts/lab`` asked for the long version of every scenario."""
    return os.environ.get("TXLOCK_LAB_SCALE", "ci") == "long"


def scaled(ci: int, long: int) -> int:
    """``ci`` in the short run, ``long`` in the long one."""
    return long if long_run() else ci


def minutes(default: float) -> float:
    """The time budget of one long scenario, in minutes (``TXLOCK_LAB_MINUTES``)."""
    value = os.environ.get("TXLOCK_LAB_MINUTES")
    return float(value) if value else default


def percentiles(samples: Iterable[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``samples`` (seconds or any unit), ``None`` when there are none."""
    values = sorted(samples)
    if not values:
        return {"p50": None, "p99": None, "max": None}
    if len(values) == 1:
        return {"p50": values[0], "p99": values[0], "max": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p99": cuts[98], "max": values[-1]}


def record(scenario: str, backend: str, **figures: Any) -> dict[str, Any]:
    """Report one scenario's figures on one backend; returns the row (also when not written).

    Figures are plain JSON values; name them plainly (``acquisitions``, ``faults``,
    ``overlaps``, ``token_regressions``, ``recovery_s`` as a :func:`percentiles` dict,
    ``loss_signals``, ...). The run's scale is added as ``scale``.
    """
    row: dict[str, Any] = {"scenario": scenario, "backend": backend,
                           "scale": "long" if long_run() else "ci", "at": time.time(), **figures}
    if os.environ.get("TXLOCK_LAB_COMMIT"):  # the commit the run started at (scripts/lab)
        row["commit"] = os.environ["TXLOCK_LAB_COMMIT"]
    directory = os.environ.get("TXLOCK_LAB_REPORT")
    if directory:
        path = Path(directory) / "results.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    return row
