"""Start-up: a fresh process that imports txlock and takes its first lock.

    python benchmarks/bench_startup.py

Each row is the median wall time of fresh processes, beside the floor (an interpreter that
does nothing, or flock(1)) and beside Prefect's managers doing the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import scratch
from _harness import Row, median, report
from _sizes import sized

RUNS = sized(15, 2)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    samples = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return median(samples)


def has(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def main() -> None:
    with scratch("startup") as tmp:
        rows = measure(sys.executable, tmp)
    cached = "off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    report("startup", f"Start-up (fresh processes, median of {RUNS})", rows,
           notes=f"Bytecode caching was {cached} for this run (PYTHONDONTWRITEBYTECODE); with it off, "
                 "every process compiles txlock's modules from source, so these are upper bounds.")


def measure(py: str, tmp: Path) -> list[Row]:
    rows = []
    floor = timed([py, "-c", "pass"])
    ours = timed([py, "-c", "import txlock; txlock.MemoryLockManager().acquire_lock('k', 'h')"])
    theirs = None
    if has("prefect.locking.memory"):
        code = "from prefect.locking.memory import MemoryLockManager as M; M().acquire_lock('k', 'h')"
        theirs = timed([py, "-c", code])
    rows.append(Row("import + first memory lock", "s", ours, floor, "python -c pass", theirs,
                    "prefect MemoryLockManager", "< 0.1 s", ours < 0.1))
    url = f"file://{tmp}/locks"
    ours_f = timed([py, "-c", f"import txlock; txlock.from_url({url!r}).acquire_lock('k', 'h')"])
    theirs_f = None
    if has("prefect.locking.filesystem"):
        theirs_f = timed([py, "-c", "from pathlib import Path; from prefect.locking.filesystem import "
                          f"FileSystemLockManager as M; M(Path({str(tmp / 'prefect')!r})).acquire_lock('k', 'h')"])
    rows.append(Row("import + first file lock", "s", ours_f, floor, "python -c pass", theirs_f,
                    "prefect FileSystemLockManager", "< 0.1 s", ours_f < 0.1))
    cli = shutil.which("txlock", path=str(Path(py).parent)) or shutil.which("txlock")
    if cli:
        env = {**os.environ, "TXLOCK_URL": f"sqlite:///{tmp}/locks.db"}
        run = timed([cli, "run", "k", "--", "true"], env)
        flock = timed(["flock", str(tmp / "flockfile"), "true"]) if shutil.which("flock") else None
        rows.append(Row("`txlock run KEY -- true` (SQLite)", "s", run, flock, "flock(1)", None,
                        "n/a (Prefect has no CLI for locks)", "< 0.2 s", run < 0.2))
    return rows


if __name__ == "__main__":
    main()
