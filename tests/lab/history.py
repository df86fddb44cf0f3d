"""Histories of lock operations, as the lab's workers record them and the checkers read them.

Each worker (process, thread or task) appends one JSON object per line to its own file,
``<directory>/<proc>.jsonl``, with a single ``os.write`` on an ``O_APPEND`` descriptor, so
a line is either whole or, if the process is killed in the middle of it, a torn last line.
Times are ``time.monotonic_ns()``: ``CLOCK_MONOTONIC`` is one clock for every process of the
host's root time namespace, so events of different processes can be ordered by it.

Phases follow Jepsen's: ``invoke`` when an operation starts, then ``ok`` (it happened),
``fail`` (it definitely did not happen) or ``info`` (nobody knows: an error, a crash, a lost
reply). ``kill`` (written by the killer under the victim's name) and ``lost`` (the client
learnt its hold was lost) are ``info`` events that end the holds of that process.

Two rules keep histories checkable:

* **A name is one process life.** A worker respawned after a kill takes a new ``proc``
  name. The checkers end every hold of a killed name, including a grant the victim logged
  after the kill event (it runs on for a moment after the killer took the time).
* **A kill's time is taken before the signal is sent** (``t_ns=time.monotonic_ns()`` read
  just before ``os.kill``): the victim's holds may end as soon as the signal lands, and a
  later time would make its hold look as if it outlived the next grant.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Event", "HistoryError", "HistoryWriter", "read_history"]

class HistoryError(ValueError):
    """A history file that cannot be read: a damaged line that is not the file's last."""


@dataclass(frozen=True)
class Event:
    """One line of a history: what ``proc`` did (or learnt) on ``key`` at ``t_ns``."""

    proc: str
    key: str
    op: str
    phase: str
    t_ns: int
    token: int | None = None
    valid_until_ns: int | None = None
    value: Any = None

    def describe(self) -> str:
        """A short one-line rendering for violation messages."""
        extra = "".join(
            f" {name}={getattr(self, name)!r}"
            for name in ("token", "valid_until_ns", "value")
            if getattr(self, name) is not None
        )
        return f"{self.t_ns} {self.proc} {self.op}:{self.phase} key={self.key!r}{extra}"


class HistoryWriter:
    """Appends the events of one process (or thread, or task) to ``<directory>/<proc>.jsonl``.

    One writer per name at a time. A file left by a killed predecessor of the same name
    may end in a torn line; the writer cuts that tail off before its first write, so the
    file stays readable (the torn event is as lost as if the kill had come a moment earlier).
    """

    def __init__(self, directory: str | Path, proc: str) -> None:
        self.proc = proc
        self.path = Path(directory) / f"{proc}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _cut_torn_tail(self.path, self._fd)

    def write(
        self,
        key: str,
        op: str,
        phase: str,
        *,
        token: int | None = None,
        valid_until_ns: int | None = None,
        value: Any = None,
        t_ns: int | None = None,
    ) -> int:
        """Append one event (one ``os.write`` of one line); return its ``t_ns``."""
        if self._fd is None:
            raise ValueError(f"history writer for {self.proc!r} is closed")
        when = time.monotonic_ns() if t_ns is None else t_ns
        row = {"proc": self.proc, "key": key, "op": op, "phase": phase, "t_ns": when,
               "token": token, "valid_until_ns": valid_until_ns, "value": value}
        line = (json.dumps(row, default=str, ensure_ascii=True) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # a regular file takes a small write whole, or the disk is full
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
        return when

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_torn_tail(path: Path, fd: int) -> None:
    """Truncate ``path`` after its last newline if it does not end with one."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(fd, data.rfind(b"\n") + 1)


def _parse(raw: bytes) -> Event:
    """One line as an :class:`Event`; ``ValueError`` when it is not one."""
    row = json.loads(raw)
    if not isinstance(row, dict) or not {"proc", "key", "op", "phase", "t_ns"} <= row.keys():
        raise ValueError("not an event object")
    return Event(str(row["proc"]), str(row["key"]), str(row["op"]), str(row["phase"]), int(row["t_ns"]),
                 row.get("token"), row.get("valid_until_ns"), row.get("value"))


def read_history(directory: str | Path) -> list[Event]:
    """Every event of every ``*.jsonl`` file below ``directory``, sorted by ``t_ns``.

    A torn last line of a file (a process killed while writing it) is dropped; a damaged
    line anywhere else raises :class:`HistoryError` naming the file and the line. Events
    with the same ``t_ns`` keep their file order.
    """
    keyed: list[tuple[int, str, int, Event]] = []
    for path in sorted(Path(directory).rglob("*.jsonl")):
        lines = path.read_bytes().split(b"\n")
        # A file ending in "\n" splits into its lines plus one empty string.
        last = len(lines) - 1
        for index, raw in enumerate(lines):
            if not raw.strip():
                if index == last:
                    continue
                raise HistoryError(f"{path}:{index + 1}: empty line in a history")
            try:
                event = _parse(raw)
            except (ValueError, TypeError) as exc:
                if index == last:  # torn: no newline after it
                    continue
                raise HistoryError(f"{path}:{index + 1}: damaged line ({exc}): {raw[:120]!r}") from exc
            keyed.append((event.t_ns, str(path), index, event))
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]

