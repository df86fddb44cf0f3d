"""A resource that refuses stale writers: the lab's fenced store.

:class:`FencedFile` is a file of accepted writes, one JSON line ``[token, value]`` each.
Every operation takes an exclusive ``flock`` of the file, so processes on the host share
it safely; a write is accepted only when its token is at least the highest accepted so far
(equal tokens are the same grant writing again). This is the check docs/fencing.md shows for
SQL, Redis and object stores, done with a file.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FencedFile"]

#: How much of the file's tail is read at a time when looking for the last accepted write.
_TAIL = 4096


class FencedFile:
    """A file under ``flock`` that accepts a write only with a token >= the highest seen.

    Safe across threads and processes of one host (each call opens its own descriptor).
    A writer killed in the middle of its append leaves a torn last line; the next write cuts
    it off under the lock (that write was never accepted: its caller never heard back).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)

    @contextmanager
    def _locked(self, operation: int, flags: int) -> Iterator[int]:
        fd = os.open(self.path, flags | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, operation)
            yield fd
        finally:
            os.close(fd)  # drops the flock

    def write(self, token: int, value: str) -> bool:
        """Append ``value`` if ``token`` >= the highest accepted token; ``True`` if accepted."""
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"a fencing token is an int, not {type(token).__name__}")
        line = (json.dumps([token, value]) + "\n").encode()
        with self._locked(fcntl.LOCK_EX, os.O_RDWR) as fd:
            highest, whole = _last_token(fd)
            if whole < os.fstat(fd).st_size:
                os.truncate(fd, whole)  # a torn line left by a writer that died mid-append
            if token < highest:
                return False
            os.lseek(fd, whole, os.SEEK_SET)
            if os.write(fd, line) != len(line):
                raise OSError(f"short write to {self.path}")
            return True

    def highest(self) -> int:
        """The highest accepted token, ``0`` when nothing was written."""
        with self._locked(fcntl.LOCK_SH, os.O_RDONLY) as fd:
            return _last_token(fd)[0]

    def accepted(self) -> list[tuple[int, str]]:
        """Every accepted write, in the order it was accepted."""
        with self._locked(fcntl.LOCK_SH, os.O_RDONLY) as fd:
            data = _read_all(fd)
        lines = data.split(b"\n")[:-1]  # the last piece is empty or a torn line
        return [(int(token), str(value)) for token, value in map(json.loads, lines)]

    def __repr__(self) -> str:
        return f"FencedFile({str(self.path)!r})"


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _last_token(fd: int) -> tuple[int, int]:
    """The token of the last whole line and the file's length up to that line's end."""
    size = os.fstat(fd).st_size
    end = size
    tail = b""
    while end > 0 or tail:
        start = max(0, end - _TAIL)
        tail = os.pread(fd, end - start, start) + tail
        end = start
        cut = tail.rfind(b"\n")
        if cut < 0:
            if end == 0:
                return 0, 0  # only a torn line
            continue
        whole = end + cut + 1  # bytes up to and including the last newline
        previous = tail.rfind(b"\n", 0, cut)
        if previous >= 0 or end == 0:
            return int(json.loads(tail[previous + 1:cut])[0]), whole
    return 0, 0
