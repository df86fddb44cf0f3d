"""Turn the fault lab's results (one JSON line per scenario and backend, written by
``tests/lab/report.py``) into ``RELIABILITY.md``: one table per scenario, a row per backend
(and mode), with the commit and the machine the run was made on.

    python scripts/lab_report.py RESULTS.jsonl RELIABILITY.md [--backend B]
    python scripts/lab_report.py RESULTS.jsonl -              print instead of writing

Rows of an existing ``RELIABILITY.md`` are kept unless this run measured the same scenario,
backend and mode again (each table says when and at which commit each row was measured), so
the lab can be run a scenario or a backend at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: What each scenario injects and checks, in the order of the report.
SCENARIOS: dict[str, str] = {
    "kill": "8 processes on one key; a random one SIGKILLed every ~200 ms and respawned.",
    "pause": "A holder SIGSTOPped for 1.5x its lease while another takes the key, then SIGCONTed.",
    "partition": "The holder's traffic to the server dropped (nft, network namespaces) for 2x the lease.",
    "ambiguous": "The reply to an acquire dropped after the server applied it (a fault proxy).",
    "redis_stall": "CLIENT PAUSE and SIGSTOP of a private Redis while a lease is held.",
    "redis_restart": "kill -9 and restart of a private Redis, without and with AOF.",
    "failover": "A private Redis primary killed; Sentinel promotes its replica.",
    "pg_session": "PostgreSQL sessions terminated, a client SIGSTOPped, the server restarted.",
    "clock": "A client's wall clock stepped +-1 h (libfaketime), a process in its own time namespace.",
    "hostile_waiters": "Many async waiters on one key while a holder takes and releases it.",
    "distinct_keys": "Many distinct keys acquired and released: the store must end empty.",
    "fuzz_names": "Fuzzing of the file backend's key-to-file-name mapping.",
    "waiting_load": "Server commands per second while N and then 4N waiters wait on one held key.",
    "checker_negative_control": "The checkers against three deliberately broken locks (the backend column names"
    " the bug): each must be flagged.",
    "checker_positive_control": "The same workload on txlock's file backend: no violation of any kind.",
    "checker_fenced_short_lease": "A lease shorter than the work against the fenced store: stale writes refused.",
    "checker_synthetic": "Generated histories of a correct mutex, with crashes: the checkers' speed and silence.",
}

INTRO = """# Reliability

Produced by `scripts/lab` (the long versions of the scenarios in `tests/lab/`; CI runs the
short ones on every change). Each table is one fault; each row one backend (and mode), with
the figures the scenario counted: operations, faults injected, and what went wrong. The
checkers (`tests/lab/checkers.py`) read every operation's history: *overlaps* counts pairs of
holders whose validity windows intersected, *token regressions* grants whose fencing token
did not exceed the previous grant's. What each scenario does and why: `docs/reliability.md`.
"""

_KEYS_FIRST = ("backend", "mode", "persistence", "case", "fault", "engine", "ttl")
_SKIP = {"scenario", "at", "scale", "commit", "machine", "seed"}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if abs(seconds) < 10 else f"{seconds:.1f} s"


def _cell(value: Any, name: str = "") -> str:
    """One table cell; ``name`` says the unit (``*_s``: seconds, ``*_ms``: milliseconds)."""
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, dict) and set(value) >= {"p50", "p99", "max"}:
        parts = [value[k] for k in ("p50", "p99", "max")]
        if all(p is None for p in parts):
            return "n/a"
        show = (_duration if name.endswith("_s") else (lambda v: f"{v:.3g} ms") if name.endswith("_ms")
                else (lambda v: f"{v:.3g}"))
        return " / ".join("n/a" if p is None else show(p) for p in parts)
    if isinstance(value, dict):  # named parts: each keeps the unit of the whole
        unit = next((u for u in ("_ms", "_s") if name.endswith(u)), "")
        return ", ".join(f"{k} {_cell(v, k + unit)}" for k, v in value.items()) or "none"
    if isinstance(value, float) and name.endswith("_s"):
        return _duration(value)
    if isinstance(value, float) and name.endswith("_ms"):
        return f"{value:.3g} ms"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return ""
    return str(value).replace("|", "\\|")


def _header(name: str) -> str:
    for unit in ("_s", "_ms"):
        if name.endswith(unit):
            name = name[: -len(unit)]
    return name.replace("_", " ")


def render_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (one scenario): the identifying columns first."""
    columns: list[str] = [k for k in _KEYS_FIRST if any(k in r for r in rows)]
    for row in rows:
        for key in row:
            if key not in columns and key not in _SKIP:
                columns.append(key)
    columns.append("measured")
    lines = ["| " + " | ".join(_header(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        stamp = f"{row.get('commit', '?')}, {time.strftime('%Y-%m-%d %H:%M', time.gmtime(row.get('at', 0)))} UTC"
        cells = [_cell(row.get(c), c) for c in columns[:-1]] + [stamp]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _existing_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier report, kept in a comment block at its end."""
    if not path.exists():
        return []
    match = re.search(r"<!-- lab-results\n(.*?)\n-->", path.read_text(), re.S)
    if not match:
        return []
    return [json.loads(line) for line in match.group(1).splitlines() if line.strip()]


def _identity(row: dict[str, Any]) -> tuple[str, ...]:
    """What a row measures: its scenario, backend and mode (the columns that name it)."""
    return (str(row.get("scenario")), *(str(row.get(k, "")) for k in _KEYS_FIRST))


def render(rows: list[dict[str, Any]], machine: str) -> str:
    """The whole report."""
    parts = [INTRO, f"Machine: {machine}.\n"]
    order = list(SCENARIOS) + sorted({r["scenario"] for r in rows} - set(SCENARIOS))
    for scenario in order:
        found = [r for r in rows if r["scenario"] == scenario]
        if not found:
            continue
        found.sort(key=lambda r: tuple(str(r.get(k, "")) for k in _KEYS_FIRST))
        parts.append(f"## {scenario.replace('_', ' ')}\n\n{SCENARIOS.get(scenario, '')}\n\n{render_table(found)}\n")
    data = "\n".join(json.dumps(r, sort_keys=True) for r in rows)
    parts.append(f"<!-- lab-results\n{data}\n-->\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("output", help="RELIABILITY.md, or - to print")
    parser.add_argument("--backend", help="accepted for symmetry with scripts/lab; rows merge by identity")
    args = parser.parse_args(argv)
    source = Path(args.results)
    if not source.exists():
        print(f"no results in {source}: did any scenario run?", file=sys.stderr)
        return 1
    commit = _git_commit()
    new = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    for row in new:
        row.setdefault("commit", commit)
    keep: list[dict[str, Any]] = []
    if args.output != "-":
        measured = {_identity(r) for r in new}
        keep = [r for r in _existing_rows(Path(args.output)) if _identity(r) not in measured]
    text = render(keep + new, _machine())
    if args.output == "-":
        print(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: {len(new)} new rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
