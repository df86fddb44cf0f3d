"""What commands print: text for people, JSON for scripts (``--json``), warnings, tables."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from txlock._types import LockInfo
    from txlock.cli._exit_codes import CliError

__all__ = ["LogHandler", "Output", "duration", "info_json", "shown", "table", "write"]


class Output:
    """Where a command writes: people get text, scripts (``--json``) get JSON."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def data(self, value: Any) -> None:
        write(sys.stdout, json.dumps(value) + "\n")

    def text(self, line: str) -> None:
        write(sys.stdout, line + "\n")

    def note(self, line: str) -> None:
        """A remark for people on stderr (silent with ``--json``)."""
        if not self.json:
            write(sys.stderr, f"txlock: {line}\n")

    def error(self, error: CliError) -> None:
        if self.json:
            report = {"error": error.kind, "message": error.message, "exit_code": error.code}
            write(sys.stderr, json.dumps(report) + "\n")
        else:
            write(sys.stderr, f"txlock: error: {error.message}\n")


def write(stream: TextIO, text: str) -> None:
    """Write and flush ``text``; a terminal that cannot show it gets it escaped, a closed pipe nothing."""
    try:
        stream.write(text)
        stream.flush()
    except UnicodeEncodeError:
        stream.write(text.encode("ascii", "backslashreplace").decode("ascii"))
        stream.flush()
    except BrokenPipeError:
        pass


class LogHandler(logging.Handler):
    """Library warnings (a failed background renewal) as one line each on stderr."""

    def __init__(self, output: Output) -> None:
        super().__init__(logging.WARNING)
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exception = record.exc_info[1]
            message = f"{message}: {type(exception).__name__}: {exception}"
        if self.output.json:
            write(sys.stderr, json.dumps({"warning": message}) + "\n")
        else:
            write(sys.stderr, f"txlock: warning: {message}\n")


def shown(text: str) -> str:
    """A key or holder as people should see it: as is when plain, else quoted and escaped."""
    if text and text.isprintable() and text.strip() == text:
        return text
    return repr(text)


def duration(seconds: float | None) -> str:
    """``2.5s``, ``42s``, ``3m05s``, ``2h03m``, ``1d02h``; ``-`` for ``None``."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "forever"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def info_json(info: LockInfo, now: float | None = None) -> dict[str, Any]:
    """The JSON shape of a held lock (``status``, ``ls``)."""
    now = time.time() if now is None else now
    return {
        "key": info.key,
        "holder": info.holder,
        "token": info.token,
        "acquired_at": info.acquired_at,
        "expires_at": info.expires_at,
        "held_for": round(max(0.0, now - info.acquired_at), 3),
        "expires_in": None if info.expires_at is None else round(max(0.0, info.expires_at - now), 3),
        "waiters": info.waiters,
    }


def _terminal_width(text: str) -> int:
    """How many terminal columns ``text`` takes (wide characters two, combining ones none)."""
    import unicodedata  # lazy: only `ls` needs it

    return sum(
        2 if unicodedata.east_asian_width(char) in "WF" else 0 if unicodedata.combining(char) else 1
        for char in text
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Align ``rows`` under ``header``; the columns in ``right`` are right-aligned."""
    widths = [max(_terminal_width(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = []
        for column, cell in enumerate(row):
            padding = " " * (widths[column] - _terminal_width(cell))
            cells.append(padding + cell if column in right else cell + padding)
        lines.append("  ".join(cells).rstrip())
    return lines
