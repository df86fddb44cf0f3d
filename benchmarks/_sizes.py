"""How large each measurement is: a full run, or a smoke run (``python benchmarks/run.py
--quick``, which sets ``TXLOCK_BENCH_QUICK=1``: few iterations, no results saved, numbers
that mean nothing). Spawned workers inherit the setting through the environment.
"""

from __future__ import annotations

import os
from typing import Any

QUICK = os.environ.get("TXLOCK_BENCH_QUICK") == "1"


def sized(full: Any, quick: Any) -> Any:
    """``full``, or ``quick`` in a smoke run."""
    return quick if QUICK else full


#: Sizes the suites share: hand-off rounds (txlock and the floor; Prefect's manager is
#: slower, so fewer), the length of a contention run, keys held at once.
HANDOFFS = sized(300, 10)
PREFECT_HANDOFFS = sized(20, 4)
CONTENTION_SECONDS = sized(3.0, 0.5)
MANY_KEYS = sized(10_000, 200)
