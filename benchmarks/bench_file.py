"""Benchmarks of the filesystem backend, beside the physical floor and Prefect's manager.

Rows:

* uncontended acquire+release, beside the floor of a file lock (``O_EXCL`` create + write
  64 bytes + close + unlink in the same directory) and Prefect's ``FileSystemLockManager``;
* cross-process hand-off (release in one process -> acquire returns in the other, which was
  asleep waiting), p50 and p99, beside a blocking ``flock`` hand-off (the kernel's own
  wake-up) and Prefect;
* 4 processes contending on one key, throughput with an exclusion check (an ``O_EXCL``
  marker file created and removed inside every critical section: a failed create is an
  overlap), beside 4 processes doing the same under a bare ``flock``, and Prefect;
* 10,000 keys held by one process: time per acquire, files in the directory, descriptors
  held by the process (beside 10,000 ``O_EXCL`` files, and Prefect).

Run with the benchmark environment (Prefect installed): ``python benchmarks/bench_file.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import txlock
from _common import CTX, contend, entered, flock_ops, prefect_fs, prefect_per_op, scratch
from _harness import Row, floor_and_ours, pct, report, timed_keys
from _sizes import CONTENTION_SECONDS, HANDOFFS, MANY_KEYS, PREFECT_HANDOFFS

HELD_KEYS = MANY_KEYS
PAYLOAD = b"x" * 64


def manager(kind: str, directory: str) -> Any:
    if kind == "txlock":
        return txlock.FileSystemLockManager(directory)
    return prefect_fs(directory)


def fds() -> int:
    """Descriptors open in this process."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


# ---------------------------------------------------------------------- uncontended


def uncontended(tmp: Path) -> Row:
    m = txlock.FileSystemLockManager(tmp / "unc")
    floor_dir = os.open(tmp / "unc", os.O_RDONLY | os.O_DIRECTORY)

    def floor(n: int) -> None:
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        for _ in range(n):
            fd = os.open("floor", flags, 0o600, dir_fd=floor_dir)
            os.write(fd, PAYLOAD)
            os.close(fd)
            os.unlink("floor", dir_fd=floor_dir)

    t_floor, t_ours = floor_and_ours(floor, m, "bench:k", 5000, ours_last=True)
    t_prefect = prefect_per_op(prefect_fs(tmp / "unc-prefect"), "bench:k", 500)
    met = t_ours <= 2 * t_floor and (t_prefect is None or t_ours * 5 <= t_prefect)
    os.close(floor_dir)
    m.close()
    return Row(
        "uncontended acquire+release", "s", t_ours, t_floor, "O_EXCL create+write 64 B+close+unlink",
        t_prefect, "Prefect FileSystemLockManager" if t_prefect else "Prefect not installed",
        "<= 2x floor, >= 5x faster than Prefect", met,
    )


# ---------------------------------------------------------------------- hand-off


def _handoff_side(kind: str, directory: str, me: int, rounds: int, conn: Any) -> None:
    """Ping-pong: each side takes the lock in turn; returns [(round, released_at | acquired_at)]."""
    if kind == "flock":
        acquire, release = flock_ops(os.path.join(directory, "flock"))
    else:
        m = manager(kind, directory)

        def acquire() -> None:
            m.acquire_lock("bench:handoff", f"side{me}", acquire_timeout=60)

        def release() -> None:
            m.release_lock("bench:handoff", f"side{me}")

    released: list[int] = []
    acquired: list[int] = []
    conn.send("ready")
    conn.recv()
    for r in range(rounds):
        if r % 2 == me:  # my turn to hold, then hand over
            if r:
                acquire()
                acquired.append(time.monotonic_ns())
            else:
                acquire()
                acquired.append(0)
            conn.send("holding")
            conn.recv()  # the other side is about to wait; give it time to fall asleep
            time.sleep(0.003)
            released.append(time.monotonic_ns())
            release()
        else:
            conn.recv()  # "holding"
            conn.send("waiting")
    conn.send((released, acquired))


def handoff(kind: str, tmp: Path, rounds: int) -> list[float] | None:
    if kind == "prefect" and prefect_fs(tmp) is None:
        return None
    directory = str(tmp / f"handoff-{kind}")
    os.makedirs(directory, exist_ok=True)
    pipes = [CTX.Pipe() for _ in range(2)]
    procs = [
        CTX.Process(target=_handoff_side, args=(kind, directory, i, rounds, pipes[i][1])) for i in range(2)
    ]
    for p in procs:
        p.start()
    a, b = pipes[0][0], pipes[1][0]
    assert a.recv() == "ready" and b.recv() == "ready"
    a.send("go")
    b.send("go")
    # Relay messages between the two sides (they only talk to us).
    for r in range(rounds):
        holder, waiter = (a, b) if r % 2 == 0 else (b, a)
        assert holder.recv() == "holding"
        waiter.send("holding")
        assert waiter.recv() == "waiting"
        holder.send("go")
    results = [a.recv(), b.recv()]
    for p in procs:
        p.join(60)
    released = {0: results[0][0], 1: results[1][0]}
    acquired = {0: results[0][1], 1: results[1][1]}
    samples = []
    for r in range(1, rounds):
        side, prev = r % 2, (r - 1) % 2
        t_release = released[prev][(r - 1) // 2]
        t_acquire = acquired[side][r // 2]
        samples.append((t_acquire - t_release) / 1e9)
    return samples


# ---------------------------------------------------------------------- contention


def _contend(kind: str, directory: str, seconds: float, start: Any, out: Any) -> None:
    marker = os.path.join(directory, "inside")
    if kind == "flock":
        acquire, release = flock_ops(os.path.join(directory, "flock"))
    else:
        m = manager(kind, directory)
        me = f"p{os.getpid()}"

        def acquire() -> None:
            if not m.acquire_lock("bench:hot", me, acquire_timeout=max(0.0, end - time.monotonic())):
                raise TimeoutError

        def release() -> None:
            m.release_lock("bench:hot", me)

    n = overlaps = errors = 0
    start.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            acquire()
        except TimeoutError:
            continue  # the run ended while waiting
        except Exception:  # Prefect's manager raises on torn reads; count and go on
            errors += 1
            continue
        if not entered(marker):
            overlaps += 1
        try:
            release()
        except Exception:
            errors += 1
        n += 1
    out.put((n, overlaps, errors))


def contention(kind: str, tmp: Path, seconds: float) -> tuple[Any, ...] | None:
    """(operations per second, overlaps, errors) of 4 processes, or None without Prefect."""
    if kind == "prefect" and prefect_fs(tmp) is None:
        return None
    directory = str(tmp / f"contend-{kind}")
    os.makedirs(directory, exist_ok=True)
    # The start is given 1 s after the spawn: let the interpreters finish importing.
    return contend(_contend, (kind, directory, seconds), 4, seconds, settle=1.0)


# ---------------------------------------------------------------------- many held keys


def held_keys(tmp: Path) -> list[Row]:
    rows = []
    m = txlock.FileSystemLockManager(tmp / "held")
    m.acquire_lock("warm-up", "me")  # makes this process's life file
    t_ours, fds_ours = timed_keys(lambda i: m.acquire_lock(f"held:{i}", "me"), HELD_KEYS, fds)
    files_ours = sum(1 for _ in os.scandir(tmp / "held"))
    t0 = time.perf_counter()
    listed = len(m.list_locks("held:"))
    t_list = time.perf_counter() - t0
    assert listed == HELD_KEYS, listed

    floor_dir = tmp / "held-floor"
    floor_dir.mkdir()
    dfd = os.open(floor_dir, os.O_RDONLY | os.O_DIRECTORY)

    def floor(i: int) -> None:
        fd = os.open(f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=dfd)
        os.write(fd, PAYLOAD)
        os.close(fd)

    t_floor, _ = timed_keys(floor, HELD_KEYS)
    os.close(dfd)

    pm = prefect_fs(tmp / "held-prefect")
    t_prefect = files_prefect = fds_prefect = None
    if pm is not None:
        t_prefect, fds_prefect = timed_keys(lambda i: pm.acquire_lock(f"held:{i}", "me"), HELD_KEYS, fds)
        files_prefect = sum(1 for _ in os.scandir(tmp / "held-prefect"))
    pname = "Prefect FileSystemLockManager" if pm is not None else "Prefect not installed"
    rows.append(Row(f"{HELD_KEYS:,} held keys: acquire each", "s", t_ours, t_floor, "O_EXCL create+write 64 B+close",
                    t_prefect, pname))
    rows.append(Row(f"{HELD_KEYS:,} held keys: files in the directory", "files", files_ours, HELD_KEYS,
                    "one file per key", files_prefect, pname, note="+ tokens file and life/ directory"))
    from txlock.backends.file import FD_CACHE

    rows.append(Row(f"{HELD_KEYS:,} held keys: descriptors held", "fds", fds_ours, 0, "none",
                    fds_prefect, pname, target=f"none per held lock (<= {FD_CACHE} cached, any number of holds)",
                    met=fds_ours <= FD_CACHE,
                    note="the descriptors of the last keys used are kept, unlocked, for the next call"))
    rows.append(Row(f"list_locks over {HELD_KEYS:,} held keys", "s", t_list))
    for i in range(HELD_KEYS):
        m.release_lock(f"held:{i}", "me")
    m.close()
    return rows


def main() -> None:
    rows: list[Row] = []
    with scratch("file") as tmp:
        rows.append(uncontended(tmp))

        ours = handoff("txlock", tmp, HANDOFFS)
        floor = handoff("flock", tmp, HANDOFFS)
        theirs = handoff("prefect", tmp, PREFECT_HANDOFFS)
        assert ours is not None and floor is not None
        pname = "Prefect FileSystemLockManager" if theirs is not None else "Prefect not installed"
        for q in (50, 99):
            rows.append(Row(
                f"cross-process hand-off p{q}", "s", pct(ours, q), pct(floor, q), "blocking flock hand-off",
                pct(theirs, q) if theirs else None, pname,
                "< 1 ms" if q == 50 else "", (pct(ours, q) < 1e-3) if q == 50 else None,
            ))

        c_ours = contention("txlock", tmp, CONTENTION_SECONDS)
        c_floor = contention("flock", tmp, CONTENTION_SECONDS)
        c_theirs = contention("prefect", tmp, CONTENTION_SECONDS)
        assert c_ours is not None and c_floor is not None
        note = f"overlaps: txlock {c_ours[1]}, flock {c_floor[1]}"
        if c_theirs is not None:
            note += f", Prefect {c_theirs[1]} (and {c_theirs[2]} exceptions)"
        rows.append(Row(
            "4 processes on one key, throughput", "ops/s", c_ours[0], c_floor[0], "4 processes on a bare flock",
            c_theirs[0] if c_theirs else None, pname, ">= 0.5x floor, 0 overlaps",
            c_ours[0] >= 0.5 * c_floor[0] and c_ours[1] == 0 and c_ours[2] == 0, note=note, lower_is_better=False,
        ))
        rows.extend(held_keys(tmp))
    report(
        "file",
        "Filesystem backend (FileSystemLockManager)",
        rows,
        notes=(
            "Hand-off: the waiting process is asleep (3 ms after it started waiting) when the holder "
            "releases; the time is from just before release_lock to the return of acquire_lock in the "
            "other process. Contention: each critical section creates and removes an O_EXCL marker file; "
            "a failed create counts as an overlap."
        ),
    )


if __name__ == "__main__":
    main()
