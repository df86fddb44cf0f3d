"""What observing costs on the hottest path: uncontended acquire+release on ``memory://``.

    python benchmarks/bench_observers.py

Rows: no observer; a no-op ``txlock.Observer``; ``PrometheusObserver`` (own registry);
``OpenTelemetryObserver`` on the API alone (no SDK: what an application pays that has the
extra installed but exports nothing). Each is ``timeit`` of acquire_lock+release_lock, best
of 7 rounds, the variants measured in alternation so noise hits them alike; the ratio column
is each row against "no observer". Rows whose package is missing say so.
"""

from __future__ import annotations

import sys
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import txlock
from _harness import Row, report, step
from _sizes import sized

PAIRS = sized(20_000, 200)
ROUNDS = sized(7, 1)


def manager_with(observer: txlock.ObserverLike | None) -> txlock.BaseLockManager:
    manager = txlock.from_url(f"memory://bench-observers-{uuid.uuid4().hex}")
    if observer is not None:
        manager.add_observer(observer)
    return manager


def pairs(manager: txlock.BaseLockManager) -> Callable[[], None]:
    """One uncontended acquire_lock+release_lock (what ``timeit`` repeats)."""
    acquire, release = manager.acquire_lock, manager.release_lock

    def pair() -> None:
        acquire("k", "h")
        release("k", "h")

    return pair


def observers() -> dict[str, txlock.ObserverLike | str | None]:
    """The variants: an observer, ``None`` for none, or why it cannot be measured here."""
    found: dict[str, txlock.ObserverLike | str | None] = {"no observer": None, "no-op Observer": txlock.Observer()}
    try:
        from prometheus_client import CollectorRegistry

        from txlock.observers.prometheus import PrometheusObserver

        found["PrometheusObserver"] = PrometheusObserver(CollectorRegistry())
    except ImportError:
        found["PrometheusObserver"] = "n/a: install txlock[prometheus]"
    try:
        from txlock.observers.otel import OpenTelemetryObserver

        found["OpenTelemetryObserver, API only"] = OpenTelemetryObserver()
    except ImportError:
        found["OpenTelemetryObserver, API only"] = "n/a: install txlock[otel]"
    return found


def main() -> None:
    variants = observers()
    timers = {
        name: timeit.Timer(pairs(manager_with(observer)))
        for name, observer in variants.items()
        if not isinstance(observer, str)
    }
    step(f"{len(timers)} variants, {ROUNDS} rounds of {PAIRS:,} pairs")
    best = dict.fromkeys(timers, float("inf"))
    for timer in timers.values():
        timer.timeit(max(1, PAIRS // 10))  # warm up
    for _ in range(ROUNDS):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(PAIRS) / PAIRS)
    bare = best["no observer"]
    rows = []
    for name, observer in variants.items():
        label = f"memory acquire+release, {name}"
        if isinstance(observer, str):
            rows.append(Row(label, "s", None, note=observer))
        elif observer is None:
            rows.append(Row(label, "s", bare))
        else:
            rows.append(Row(label, "s", best[name], bare, "no observer"))
    report(
        "observers",
        "Observer hooks on the memory hot path",
        rows,
        notes="`timeit` of one uncontended `acquire_lock` + `release_lock` on `memory://`, best of 7 rounds, "
        "the variants in alternation. The floor column is the same path with no observer: the cost of an "
        "observer is the difference. Without observers the hooks cost one attribute and one list test per call.",
    )


if __name__ == "__main__":
    main()
