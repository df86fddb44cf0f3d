"""Run every benchmark suite and write BENCHMARKS.md from their results.

    python benchmarks/run.py            # all suites
    python benchmarks/run.py memory     # some suites
    python benchmarks/run.py --quick    # smoke test: few iterations, BENCHMARKS.md untouched

Run it in the benchmark environment (``scripts/bench``), which has Prefect installed so
each number can sit beside Prefect's own manager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
SUITES = ["memory", "file", "sqlite", "redis", "postgres", "startup", "observers", "peers"]

sys.path.insert(0, str(HERE))
from _common import peer_table  # noqa: E402
from _harness import RESULTS, Row, machine, table  # noqa: E402


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    wanted = [a for a in argv if a != "--quick"] or SUITES
    unknown = [a for a in wanted if a not in SUITES]
    if unknown:
        print(f"unknown suite(s) {', '.join(unknown)}; the suites: {' '.join(SUITES)}", file=sys.stderr)
        return 2
    # A smoke run (see _sizes.QUICK) saves no results and leaves BENCHMARKS.md alone.
    env = {**os.environ, "TXLOCK_BENCH_QUICK": "1"} if quick else None
    failed = []
    for suite in wanted:
        script = HERE / f"bench_{suite}.py"
        if not script.exists():
            print(f"(no {script.name}; skipped)")
            continue
        print(f"=== {suite}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, check=False).returncode != 0:
            failed.append(suite)
    if quick:
        print("quick smoke run: BENCHMARKS.md not written")
    else:
        write_markdown()
    if failed:
        print(f"failed suites: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _sections(text: str) -> dict[str, str]:
    """The ``## title`` sections of a BENCHMARKS.md, in order (title -> text)."""
    found: dict[str, str] = {}
    chunks = text.split("\n## ")[1:]
    for chunk in chunks:
        title = chunk.split("\n", 1)[0]
        found[title] = "## " + chunk.rstrip("\n") + "\n"
    return found


def write_markdown() -> None:
    m = machine()
    parts = [
        "# Benchmarks",
        "",
        "Produced by `scripts/bench` (`python benchmarks/run.py`); every number in a row was measured in "
        "the same run on the same machine. *floor* is the physical limit of the medium (the cheapest "
        "operation that could possibly implement the step); *Prefect* is Prefect's own manager for the "
        "same medium. Ratios below 1 mean txlock is faster (or, for throughput rows, slower). In the "
        "peers section the *peer* columns hold, row by row, the library a user would pick instead.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['platform']}.",
        "",
    ]
    fresh: dict[str, str] = {}
    for suite in SUITES:
        path = RESULTS / f"{suite}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        rows = [Row(**r) for r in data["rows"]]
        when = f"Measured {data['machine']['date']} at commit {data['machine']['commit']}."
        render = peer_table if data["suite"] == "peers" else table
        section = [f"## {data['title']}", "", when, "", render(rows), ""]
        if data.get("notes"):
            section += [data["notes"], ""]
        fresh[data["title"]] = "\n".join(section)
    # The curves of scripts/bench --scaling (benchmarks/scaling.py writes this section).
    scaling = RESULTS / "scaling.md"
    if scaling.exists():
        fresh["Scaling"] = scaling.read_text()
    # Sections of suites not measured here (results are not committed) stay as they were,
    # each with its own "Measured ... at commit" line.
    target = ROOT / "BENCHMARKS.md"
    kept = _sections(target.read_text()) if target.exists() else {}
    for title, text in {**kept, **fresh}.items():
        parts.append(fresh.get(title, text))
    target.write_text("\n".join(parts).rstrip("\n") + "\n")
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
