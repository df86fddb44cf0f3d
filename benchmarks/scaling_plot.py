"""Pictures and the markdown section of the scaling suite (``benchmarks/scaling.py``).

:func:`draw` turns the suite's JSON into four PNG files (one per curve, one panel per
backend, txlock solid and the floor dashed on the same axes); :func:`markdown` writes the
"## Scaling" section that embeds them, with the figures in words and the findings: every
curve that should stay flat and does not is named.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

BACKENDS = ["memory", "file", "sqlite", "redis", "postgres"]
OURS = {"color": "tab:blue", "marker": "o", "label": "txlock"}
FLOOR = {"color": "tab:gray", "marker": "s", "linestyle": "--", "label": "floor"}
#: A curve that should be flat "bends" when its last point is this many times its first.
BEND = 2.0


def _grid(rows: int, backends: list[str], title: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, len(backends), figsize=(3.3 * len(backends), 2.9 * rows), squeeze=False)
    fig.suptitle(title)
    for col, name in enumerate(backends):
        axes[0][col].set_title(name)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _us(values: list[float]) -> list[float]:
    return [v * 1e6 for v in values]


def _positive(values: list[float]) -> list[float]:
    """``values`` with zeros and negatives as NaN (log axes cannot show them)."""
    return [v if v > 0 else math.nan for v in values]


def draw(data: dict[str, Any], out: Path) -> list[Path]:
    """Draw every curve present in ``data`` into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    curves = data["curves"]
    written = []
    if curves.get("held"):
        written.append(_held(curves["held"], out))
    if curves.get("waiters"):
        written.append(_waiters(curves["waiters"], out))
    if curves.get("processes"):
        written.append(_processes(curves["processes"], out, data["machine"].get("cores", "?")))
    if curves.get("expiry"):
        written.append(_expiry(curves["expiry"], out))
    return written


def _held(held: dict[str, Any], out: Path) -> Path:
    names = [n for n in BACKENDS if n in held]
    fig, axes = _grid(2, names, "Held keys: acquire+release of one more key, and store size")
    for col, name in enumerate(names):
        c = held[name]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(c["x"], _us(c["txlock_latency"]), **OURS)
        top.plot(c["x"], _us(c["floor_latency"]), **FLOOR)
        bottom.plot(c["x"], _positive(c["txlock_mib"]), **OURS)
        bottom.plot(c["x"], _positive(c["floor_mib"]), **FLOOR)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlabel("keys held")
        top.set_ylim(bottom=0)
        bottom.set_yscale("log")
        if col == 0:
            top.set_ylabel("acquire+release (us)")
            bottom.set_ylabel("store growth (MiB)")
            top.legend(fontsize="small")
    return _save(fig, out / "scaling-held-keys.png")


def _waiters(waiters: dict[str, Any], out: Path) -> Path:
    names = [n for n in BACKENDS if n in waiters]
    fig, axes = _grid(2, names, "Async waiters on one key: hand-off p50, and the load of waiting")
    for col, name in enumerate(names):
        c = waiters[name]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(c["x"], _us(c["txlock_p50"]), **OURS)
        top.plot(c["x"], _us(c["floor_p50"]), **FLOOR)
        server = name in ("redis", "postgres")
        key = "load" if server else "cpu"
        scale = 1 if server else 100
        bottom.plot(c["x"], [v * scale for v in c[f"txlock_{key}"]], **OURS)
        bottom.plot(c["x"], [v * scale for v in c[f"floor_{key}"]], **FLOOR)
        bottom.set_ylabel("server statements/s" if server else "process CPU (%)")
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlabel("waiters")
            ax.set_ylim(bottom=0)
        if col == 0:
            top.set_ylabel("hand-off p50 (us)")
            top.legend(fontsize="small")
    return _save(fig, out / "scaling-waiters.png")


def _processes(procs: dict[str, Any], out: Path, cores: str) -> Path:
    names = [n for n in BACKENDS if n in procs]
    fig, axes = _grid(2, names, f"Throughput as contenders grow ({cores} cores: beyond them, contention)")
    for col, name in enumerate(names):
        c = procs[name]
        for row, label in enumerate(("one", "distinct")):
            ax = axes[row][col]
            ax.plot(c["x"], c[f"txlock_{label}"], **OURS)
            ax.plot(c["x"], c[f"floor_{label}"], **FLOOR)
            ax.set_xscale("log", base=2)
            ax.set_xticks(c["x"], [str(x) for x in c["x"]])
            ax.set_ylim(bottom=0)
            ax.axvline(float(cores) if cores.isdigit() else 2, color="tab:red", linewidth=0.8, alpha=0.5)
            ax.set_xlabel("threads" if name == "memory" else "processes")
            if col == 0:
                ax.set_ylabel(f"ops/s, {label} key{'s' if label == 'distinct' else ''}")
        if col == 0:
            axes[0][0].legend(fontsize="small")
    return _save(fig, out / "scaling-processes.png")


def _cdf(ax: Any, samples: list[float], style: dict[str, Any]) -> None:
    if not samples:
        return
    ordered = sorted(v * 1e3 for v in samples)
    ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post",
            **{k: v for k, v in style.items() if k != "marker"})


def _expiry(expiry: dict[str, Any], out: Path) -> Path:
    names = [n for n in BACKENDS if n in expiry]
    fig, axes = _grid(2, names, "Distributions (CDF): lateness after hold_timeout, and recovery after SIGKILL")
    for col, name in enumerate(names):
        c = expiry[name]
        top, bottom = axes[0][col], axes[1][col]
        _cdf(top, c["expiry_txlock"], OURS)
        _cdf(top, c["expiry_floor"], FLOOR)
        top.set_xlabel(f"lateness (ms), ttl {c['ttl'] * 1e3:g} ms")
        if "recovery_txlock" in c:
            _cdf(bottom, c["recovery_txlock"], OURS)
            _cdf(bottom, c["recovery_floor"], FLOOR)
            bottom.set_xlabel("SIGKILL -> acquired (ms)")
            if c.get("liveness"):
                bottom.axvline(c["liveness"] * 1e3, color="tab:red", linewidth=0.8, alpha=0.5)
        else:
            bottom.text(0.5, 0.5, "n/a: the store dies\nwith its process", ha="center", va="center",
                        transform=bottom.transAxes)
            bottom.set_xticks([])
        for ax in (top, bottom):
            ax.set_ylim(0, 1.02)
        if col == 0:
            top.set_ylabel("fraction of samples")
            bottom.set_ylabel("fraction of samples")
            top.legend(fontsize="small")
    return _save(fig, out / "scaling-recovery.png")


# ---------------------------------------------------------------------- markdown


def _t(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _series(xs: list[int], values: list[float], fmt: Any) -> str:
    return ", ".join(f"{x:,}: {fmt(v)}" for x, v in zip(xs, values, strict=True))


def _bends(values: list[float], floor: list[float] | None = None) -> bool:
    """Whether a curve that should stay flat grows by more than ``BEND`` times (and, with a
    floor, more than the floor grows)."""
    good = [v for v in values if not math.isnan(v) and v > 0]
    if len(good) < 2 or good[-1] <= BEND * good[0]:
        return False
    if floor:
        fl = [v for v in floor if not math.isnan(v) and v > 0]
        if len(fl) >= 2 and good[-1] / good[0] <= 1.5 * fl[-1] / fl[0]:
            return False
    return True


def findings(data: dict[str, Any]) -> list[str]:
    """Curves that bend where they should stay flat, in words."""
    out = []
    curves = data["curves"]
    for name, c in curves.get("held", {}).items():
        if _bends(c["txlock_latency"], c["floor_latency"]):
            out.append(f"{name}: acquire+release grows with held keys ({_t(c['txlock_latency'][0])} at "
                       f"{c['x'][0]:,} -> {_t(c['txlock_latency'][-1])} at {c['x'][-1]:,}; the floor "
                       f"{_t(c['floor_latency'][0])} -> {_t(c['floor_latency'][-1])}).")
    for name, c in curves.get("waiters", {}).items():
        if _bends(c["txlock_p50"], c["floor_p50"]):
            out.append(f"{name}: hand-off p50 grows with waiters ({_t(c['txlock_p50'][0])} with {c['x'][0]:,} -> "
                       f"{_t(c['txlock_p50'][-1])} with {c['x'][-1]:,}; the floor {_t(c['floor_p50'][0])} -> "
                       f"{_t(c['floor_p50'][-1])}).")
        key = "load" if name in ("redis", "postgres") else "cpu"
        load = c[f"txlock_{key}"]
        if name in ("redis", "postgres") and max(load) > 5 and _bends([max(v, 1.0) for v in load]):
            out.append(f"{name}: server load grows with waiters ({load[0]:.1f}/s with {c['x'][0]:,} -> "
                       f"{load[-1]:.1f}/s with {c['x'][-1]:,}): waiting is not free.")
        elif key == "cpu" and max(load) > 0.05 and _bends([max(v, 0.005) for v in load]):
            out.append(f"{name}: this process's CPU while waiting grows with waiters ({load[0]:.1%} -> "
                       f"{load[-1]:.1%}).")
    for name, c in curves.get("processes", {}).items():
        for label in ("one", "distinct"):
            if c["overlaps"].get(f"txlock_{label}"):
                out.append(f"{name}: {c['overlaps'][f'txlock_{label}']} overlaps on {label} key(s): exclusion broken.")
        distinct = c["txlock_distinct"]
        if len(distinct) >= 3 and distinct[-1] < 0.5 * max(distinct):
            out.append(f"{name}: throughput on distinct keys falls as processes grow (best "
                       f"{max(distinct):,.0f}/s, {distinct[-1]:,.0f}/s with {c['x'][-1]}).")
    for name, c in curves.get("expiry", {}).items():
        from _harness import pct

        late = pct(c["expiry_txlock"], 99)
        if late > max(0.05, 10 * pct(c["expiry_floor"], 99)):
            timer = _t(pct(c["expiry_floor"], 99))
            out.append(f"{name}: expiry lateness p99 {_t(late)} (the timer's own p99 {timer}).")
    return out


def markdown(data: dict[str, Any], images: list[Path], img_dir: Path) -> str:
    """The "## Scaling" section of BENCHMARKS.md."""
    from _harness import pct

    m = data["machine"]
    base = Path(__file__).parent.parent
    lines = [
        "## Scaling",
        "",
        f"Measured {m['date']} at commit {m['commit']} by `scripts/bench --scaling` "
        "(`python benchmarks/scaling.py`), on private Redis and PostgreSQL servers started for the run."
        + (" **Quick smoke run: tiny sizes, the numbers mean nothing.**" if data.get("quick") else ""),
        "",
        f"The machine has {m['cores']} cores: curves of more processes than cores show contention, "
        "not parallelism. Solid: txlock; dashed: the floor of the medium (named per backend below). "
        "Memory contends with threads (its store lives in one process).",
        "",
    ]
    for path in images:
        try:
            rel = os.path.relpath(path, base)
        except ValueError:
            rel = str(path)
        lines += [f"![{path.stem}]({rel})", ""]
    curves = data["curves"]
    if curves.get("held"):
        lines += ["### Held keys", "", "| backend | acquire+release (txlock) | floor | store growth (txlock / floor) |",
                  "|---|---|---|---|"]
        for name, c in curves["held"].items():
            lat = _series(c["x"], c["txlock_latency"], _t)
            fl = _series(c["x"], c["floor_latency"], _t)
            size = f"{c['txlock_mib'][-1]:.1f} / {c['floor_mib'][-1]:.1f} MiB at {c['x'][-1]:,}"
            lines.append(f"| {name} | {lat} | {fl} ({c['floor_name']}) | {size} |")
        lines += ["", "Store growth: process RSS (memory), allocated blocks (file), database files (SQLite), "
                  "`used_memory` (Redis), `pg_database_size` (PostgreSQL).", ""]
    if curves.get("waiters"):
        lines += ["### Waiters on one key", "", "| backend | hand-off p50 (txlock) | floor | load while waiting |",
                  "|---|---|---|---|"]
        for name, c in curves["waiters"].items():
            server = name in ("redis", "postgres")
            key = "load" if server else "cpu"
            load = _series(c["x"], c[f"txlock_{key}"],
                           (lambda v: f"{v:.1f}/s") if server else (lambda v: f"{v:.1%}"))
            lines.append(f"| {name} | {_series(c['x'], c['txlock_p50'], _t)} | "
                         f"{_series(c['x'], c['floor_p50'], _t)} ({c['floor_name']}) | {c['load_unit']}: {load} |")
        lines += ["", "Waiters are asyncio tasks of one process sharing one manager. Load is measured over a "
                  "window in which every waiter waits and the holder holds: server statements per second "
                  "(Redis `total_commands_processed`, PostgreSQL `pg_stat_statements` calls), or this "
                  "process's CPU share for the local backends.", ""]
    if curves.get("processes"):
        lines += ["### Contenders", "", "| backend | one key (txlock / floor) | distinct keys (txlock / floor) |"
                  " overlaps (txlock) |", "|---|---|---|---|"]
        for name, c in curves["processes"].items():
            def pair(label: str, c: dict[str, Any] = c) -> str:
                return ", ".join(f"{x}: {a:,.0f} / {b:,.0f}" for x, a, b in
                                 zip(c["x"], c[f"txlock_{label}"], c[f"floor_{label}"], strict=True))

            ov = c["overlaps"].get("txlock_one", 0) + c["overlaps"].get("txlock_distinct", 0)
            lines.append(f"| {name} | {pair('one')} | {pair('distinct')} | {ov} |")
        lines += ["", "Floors: " + "; ".join(f"{n}: {c['floor_name']}" for n, c in curves["processes"].items())
                  + ".", ""]
    if curves.get("expiry"):
        lines += ["### Expiry and recovery", "", "| backend | lateness after hold_timeout p50 / p99 (floor) | "
                  "recovery after SIGKILL p50 / max (floor) |", "|---|---|---|"]
        for name, c in curves["expiry"].items():
            late = f"{_t(pct(c['expiry_txlock'], 50))} / {_t(pct(c['expiry_txlock'], 99))} " \
                   f"({_t(pct(c['expiry_floor'], 50))} / {_t(pct(c['expiry_floor'], 99))})"
            if "recovery_txlock" in c:
                rec = f"{_t(pct(c['recovery_txlock'], 50))} / {_t(max(c['recovery_txlock']))} " \
                      f"({_t(pct(c['recovery_floor'], 50))}: {c['recovery_floor_name']})"
                if c.get("liveness"):
                    rec += f"; liveness {c['liveness']:g} s"
            else:
                rec = "n/a (the store dies with its process)"
            lines.append(f"| {name} | {late} | {rec} |")
        lines += ["", "Lateness: a waiter in another process (memory: the same one) is queued when the hold "
                  "times out; floor: how late the OS wakes a timed wait. Recovery: the holder (a hold bound to "
                  "its process) is killed with SIGKILL, then the waiter calls acquire.", ""]
    found = findings(data)
    lines += ["### Findings", ""]
    lines += [f"- {f}" for f in found] if found else ["- No curve bends where it should stay flat."]
    if data.get("skipped"):
        lines += [f"- {name} not measured: {why}" for name, why in data["skipped"].items()]
    return "\n".join(lines) + "\n"
