"""Four Prefect tasks race for one cached result; a txlock manager lets exactly one compute it.

Run it (Prefect 3 and txlock installed; Prefect starts its temporary local server)::

    python examples/prefect_serializable.py                  # a SQLite store in a temp dir
    python examples/prefect_serializable.py file:///tmp/locks
    python examples/prefect_serializable.py "redis://localhost:6379/0?prefix=example:"
    python examples/prefect_serializable.py postgresql://postgres@localhost/test

Without the SERIALIZABLE lock, the four tasks all miss the cache at the same moment and
all compute the report. With it, the first computes and commits while the others wait on
the lock, then read the committed result.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.transactions import IsolationLevel

import txlock

workdir = Path(tempfile.mkdtemp(prefix="txlock-prefect-example-"))
url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{workdir}/locks.db"

# Prefect ignores acquire_lock's boolean result, so a wait must never "give up" quietly:
# bound it with the raising mode. A task that waits longer than 10 minutes then fails with
# txlock.LockTimeout (and can be retried by Prefect) instead of running unlocked.
locks = txlock.from_url(url, acquire_timeout=600, raise_on_timeout=True)

computed: list[str] = []
computed_lock = threading.Lock()


@task(
    cache_policy=INPUTS.configure(isolation_level=IsolationLevel.SERIALIZABLE, lock_manager=locks),
    persist_result=True,
    result_storage=workdir / "results",
)
def monthly_report(month: str) -> str:
    """The expensive task: one run per month, whoever asks."""
    with computed_lock:
        computed.append(month)
    time.sleep(0.5)  # the expensive part
    return f"report for {month}"


@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def reports(month: str) -> list[str]:
    """Four callers want the same report at the same moment."""
    futures = [monthly_report.submit(month) for _ in range(4)]
    return [f.result() for f in futures]


if __name__ == "__main__":
    print(f"lock store: {locks.url}")
    results = reports("2026-11")
    print(f"results: {results}")
    print(f"the report was computed {len(computed)} time(s) for {len(results)} callers")
    locks.close()
    sys.exit(0 if len(computed) == 1 and len(set(results)) == 1 else 1)
