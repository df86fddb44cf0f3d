"""Worker functions for spawned processes (importable by name in the child)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import txlock


def critical_section_worker(url: str, key: str, rounds: int, counter: str, log: str, worker: int) -> int:
    """Go through the lock ``rounds`` times doing a deliberately non-atomic increment.

    Each critical section appends ``enter``/``exit`` lines with monotonic times to ``log``
    so the parent can check that no two sections overlapped.
    """
    manager = txlock.from_url(url)
    holder = f"worker-{worker}-{os.getpid()}"
    path = Path(counter)
    with open(log, "a", buffering=1) as out:
        for _ in range(rounds):
            assert manager.acquire_lock(key, holder, acquire_timeout=60)
            try:
                out.write(f"enter {worker} {time.monotonic_ns()}\n")
                value = int(path.read_text() or "0")
                os.sched_yield()
                path.write_text(str(value + 1))
                out.write(f"exit {worker} {time.monotonic_ns()}\n")
            finally:
                manager.release_lock(key, holder)
    manager.close()
    return rounds


def check_log(lines: list[str]) -> int:
    """Assert enter/exit pairs never overlap; return the number of sections."""
    events = sorted((int(t), kind, who) for kind, who, t in (line.split() for line in lines if line.strip()))
    inside: str | None = None
    sections = 0
    for _, kind, who in events:
        if kind == "enter":
            assert inside is None, f"worker {who} entered while worker {inside} was inside"
            inside = who
            sections += 1
        else:
            assert inside == who, f"worker {who} left a section held by {inside}"
            inside = None
    return sections
