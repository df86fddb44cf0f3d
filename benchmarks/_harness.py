"""Shared benchmark helpers: timing, percentiles, result files and the markdown table (the
set-up the suites share, such as spawned workers and Prefect's managers, is in ``_common``;
how large each measurement is, in ``_sizes``).

Every benchmark script builds a list of :class:`Row` (txlock's number beside the physical
floor of the medium and beside Prefect's manager for the same medium, all measured in the
same run) and calls :func:`report`, which prints the table and saves it as JSON under
``benchmarks/results/``; ``python benchmarks/run.py`` then assembles ``BENCHMARKS.md``.

In a smoke run (``python benchmarks/run.py --quick``) timings take few iterations and
:func:`report` saves nothing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _sizes import QUICK

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    """One measured quantity.

    ``lower_is_better`` decides how ratios are phrased. ``target`` is the issue's goal in
    words (for example ``"<= 1.5x floor"``) and ``met`` whether this run reached it.
    """

    name: str
    unit: str
    txlock: float | None
    floor: float | None = None
    floor_name: str = ""
    prefect: float | None = None
    prefect_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    lower_is_better: bool = True
    extra: dict[str, float | str] = field(default_factory=dict)

    def within(self, factor: float) -> Row:
        """This row with the goal "at most ``factor`` times the floor" (``target``, ``met``)."""
        assert self.txlock is not None and self.floor is not None
        return replace(self, target=f"<= {factor:g}x floor", met=self.txlock <= factor * self.floor)


def per_op(fn: Callable[[int], None], n: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` seconds per operation; ``fn(n)`` runs ``n`` operations."""
    if QUICK:
        n, repeat = max(1, n // 100), 1
    best = float("inf")
    fn(max(1, n // 10))  # warm up
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def per_op_interleaved(fns: Mapping[str, Callable[[int], None]], n: int, rounds: int = 7) -> dict[str, float]:
    """Best-of-``rounds`` seconds per operation for each of ``fns``, measured in alternation
    (round 1 of each, round 2 of each, ...), so a floor and the code beside it see the same
    moments of a noisy machine."""
    if QUICK:
        n, rounds = max(1, n // 100), 1
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn(max(1, n // 10))  # warm up
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(n)
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


def acquire_release(m: Any, key: str, holder: str = "me") -> Callable[[int], None]:
    """``fn(n)``: ``n`` uncontended acquire+release pairs of ``key`` on the manager ``m``."""

    def run(n: int) -> None:
        acquire, release = m.acquire_lock, m.release_lock
        for _ in range(n):
            acquire(key, holder)
            release(key, holder)

    return run


def floor_and_ours(floor: Callable[[int], None], m: Any, key: str, n: int,
                   ours_last: bool = False) -> tuple[float, float]:
    """Best seconds per operation of ``floor`` and of an uncontended acquire+release of
    ``key`` on the manager ``m`` (``per_op``, 3 repeats a pass), in alternation so that
    machine noise hits both alike: the floor twice, ours twice, the floor again (and ours
    again when ``ours_last``)."""
    ours = acquire_release(m, key)
    t_floor = min(per_op(floor, n, repeat=3) for _ in range(2))
    t_ours = min(per_op(ours, n, repeat=3) for _ in range(2))
    t_floor = min(t_floor, per_op(floor, n, repeat=3))
    if ours_last:
        t_ours = min(t_ours, per_op(ours, n, repeat=3))
    return t_floor, t_ours


def timed_keys(acquire: Callable[[int], object], n: int, gauge: Callable[[], float] = lambda: 0) -> tuple[float, float]:
    """Seconds per call of ``acquire(i)`` for ``i`` in ``range(n)`` (one pass), and how much
    ``gauge()`` (descriptors held, server memory, ...) grew meanwhile."""
    before = gauge()
    t0 = time.perf_counter()
    for i in range(n):
        acquire(i)
    elapsed = (time.perf_counter() - t0) / n
    return elapsed, gauge() - before


def pct(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.1f} us"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.2f} s"
    if unit == "ops/s":
        return f"{value:,.0f}/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:,.4g} {unit}".strip()


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0 or b == 0:
        return ""
    return f"{a / b:.2f}x"


def table(rows: Sequence[Row]) -> str:
    """The markdown table of ``rows``."""
    out = [
        "| benchmark | txlock | floor | txlock / floor | Prefect | txlock / Prefect | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        floor = f"{_fmt(r.floor, r.unit)} ({r.floor_name})" if r.floor is not None else "n/a"
        pref = f"{_fmt(r.prefect, r.unit)} ({r.prefect_name})" if r.prefect is not None else (r.prefect_name or "n/a")
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        name = r.name + (f" ({r.note})" if r.note else "")
        out.append(
            f"| {name} | {_fmt(r.txlock, r.unit)} | {floor} | {_ratio(r.txlock, r.floor)} | {pref} | "
            f"{_ratio(r.txlock, r.prefect)} | {r.target} | {met} |"
        )
    return "\n".join(out)


def report(suite: str, title: str, rows: Sequence[Row], notes: str = "") -> None:
    """Print the table and save it to ``benchmarks/results/{suite}.json`` (not in a smoke run)."""
    if QUICK:
        title += " (quick smoke run: not saved, numbers mean nothing)"
    else:
        RESULTS.mkdir(exist_ok=True)
        data = {"suite": suite, "title": title, "machine": machine(), "notes": notes, "rows": [asdict(r) for r in rows]}
        (RESULTS / f"{suite}.json").write_text(json.dumps(data, indent=2))
    print(f"\n## {title}\n")
    print(table(rows))
    if notes:
        print(f"\n{notes}")


def step(what: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{Path(sys.argv[0]).stem}] {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)
