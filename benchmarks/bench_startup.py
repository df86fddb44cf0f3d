"""Start-up: a fresh process that imports txlock and takes its first lock.

    python benchmarks/bench_startup.py

Each row is the median wall time of fresh processes, beside the floor (an interpreter that
does nothing, or flock(1)) and beside Prefect's managers doing the same. Both bytecode
modes are measured in the same run, alternating process by process: *cached*, as users
have it (txlock's ``.pyc`` files written once and read by every later process), and
*from source*, every process compiling txlock's modules again (a copy of the package
without ``__pycache__``, run with ``PYTHONDONTWRITEBYTECODE=1``): the upper bound.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import scratch
from _harness import Row, median, report, step
from _sizes import sized

RUNS = sized(15, 2)

#: The issue's goals (fresh process, first lock), with bytecode cached.
GOALS = {"memory": 0.050, "file": 0.060}


def cached_env() -> dict[str, str]:
    """The environment of a process that reads (and writes) bytecode caches."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def source_env(tree: Path) -> dict[str, str]:
    """The environment of a process that compiles txlock from source: ``tree`` holds a
    copy of the package without caches, and nothing writes one."""
    return {**cached_env(), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tree)}


def copy_without_caches(destination: Path) -> Path:
    """A copy of the installed txlock package under ``destination`` with no ``.pyc`` file."""
    import txlock

    source = Path(txlock.__file__).parent
    shutil.copytree(source, destination / "txlock", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def timed_alternately(argvs: Mapping[str, tuple[list[str], dict[str, str]]]) -> dict[str, float]:
    """Median seconds of each fresh process, the processes run in turn ``RUNS`` times, so
    a noisy moment hits every variant alike."""
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    for argv, env in argvs.values():  # once untimed: caches written, files in the page cache
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    for _ in range(RUNS):
        for name, (argv, env) in argvs.items():
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
            samples[name].append(time.perf_counter() - t0)
    return {name: median(values) for name, values in samples.items()}


def has(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def main() -> None:
    with scratch("startup") as tmp:
        rows = measure(sys.executable, tmp)
    report("startup", f"Start-up (fresh processes, median of {RUNS})", rows,
           notes="*cached*: txlock's bytecode written once and read by every later process, as users have it; "
                 "*from source*: every process compiles txlock's modules (PYTHONDONTWRITEBYTECODE=1 and no "
                 "`__pycache__`), an upper bound. The standard library's bytecode is cached in both. "
                 "Prefect's managers are measured with their bytecode cached.")


def measure(py: str, tmp: Path) -> list[Row]:
    py_argv = [py, "-c"]
    source_tree = copy_without_caches(tmp / "source")
    memory_code = "import txlock; txlock.MemoryLockManager().acquire_lock('k', 'h')"
    file_url = f"file://{tmp}/locks"
    file_code = f"import txlock; txlock.from_url({file_url!r}).acquire_lock('k', 'h')"
    cached, source = cached_env(), source_env(source_tree)
    variants: dict[str, tuple[list[str], dict[str, str]]] = {
        "floor": ([*py_argv, "pass"], cached),
        "memory cached": ([*py_argv, memory_code], cached),
        "memory source": ([*py_argv, memory_code], source),
        "file cached": ([*py_argv, file_code], cached),
        "file source": ([*py_argv, file_code], source),
    }
    if has("prefect.locking.memory"):
        variants["prefect memory"] = (
            [*py_argv, "from prefect.locking.memory import MemoryLockManager as M; M().acquire_lock('k', 'h')"],
            cached,
        )
    if has("prefect.locking.filesystem"):
        variants["prefect file"] = (
            [*py_argv, "from pathlib import Path; from prefect.locking.filesystem import "
             f"FileSystemLockManager as M; M(Path({str(tmp / 'prefect')!r})).acquire_lock('k', 'h')"],
            cached,
        )
    step("import + first lock")
    t = timed_alternately(variants)
    rows = []
    for medium, label, prefect_name in (
        ("memory", "import + first memory lock", "prefect MemoryLockManager"),
        ("file", "import + first file lock", "prefect FileSystemLockManager"),
    ):
        goal = GOALS[medium]
        ours = t[f"{medium} cached"]
        rows.append(Row(f"{label}, cached", "s", ours, t["floor"], "python -c pass", t.get(f"prefect {medium}"),
                        prefect_name, f"< {goal * 1e3:.0f} ms", ours < goal))
        rows.append(Row(f"{label}, from source (upper bound)", "s", t[f"{medium} source"], t["floor"],
                        "python -c pass", t.get(f"prefect {medium}"), prefect_name))
    cli = shutil.which("txlock", path=str(Path(py).parent)) or shutil.which("txlock")
    if cli:
        step("txlock run")
        env = {**cached, "TXLOCK_URL": f"sqlite:///{tmp}/locks.db"}
        cli_variants = {"run": ([cli, "run", "k", "--", "true"], env)}
        if shutil.which("flock"):
            cli_variants["flock"] = (["flock", str(tmp / "flockfile"), "true"], env)
        c = timed_alternately(cli_variants)
        rows.append(Row("`txlock run KEY -- true` (SQLite), cached", "s", c["run"], c.get("flock"), "flock(1)", None,
                        "n/a (Prefect has no CLI for locks)", "< 0.2 s", c["run"] < 0.2))
    return rows


if __name__ == "__main__":
    main()
