"""Shared benchmark helpers: timing, percentiles, result files and the markdown table.

Every benchmark script builds a list of :class:`Row` (txlock's number beside the physical
floor of the medium and beside Prefect's manager for the same medium, all measured in the
same run) and calls :func:`report`, which prints the table and saves it as JSON under
``benchmarks/results/``; ``python benchmarks/run.py`` then assembles ``BENCHMARKS.md``.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


def per_op(fn: Callable[[int], None], n: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` seconds per operation; ``fn(n)`` runs ``n`` operations."""
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
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn(max(1, n // 10))  # warm up
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(n)
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


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
    """Print the table and save it to ``benchmarks/results/{suite}.json``."""
    RESULTS.mkdir(exist_ok=True)
    data = {"suite": suite, "title": title, "machine": machine(), "notes": notes, "rows": [asdict(r) for r in rows]}
    (RESULTS / f"{suite}.json").write_text(json.dumps(data, indent=2))
    print(f"\n## {title}\n")
    print(table(rows))
    if notes:
        print(f"\n{notes}")
