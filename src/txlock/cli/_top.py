"""``txlock top``: a live view of the locks held in a store, refreshed about once a second.

Three ways to show it, one model (:mod:`txlock.cli._top_model`):

* a terminal: a full-screen view drawn with ``rich`` (imported here only, never at the
  command line's start-up), ``q`` quits, Ctrl-C too (exit 0); the terminal's settings are
  restored on the way out, whatever ends the view;
* stdout not a terminal: the same header and table as plain text, once per refresh (like
  ``top -b``), until interrupted;
* ``--once``: one plain snapshot; ``--json``: one snapshot as JSON.

``top`` only reads the store (``list_locks``): it never takes, renews or frees a lock.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import txlock
from txlock._url import redact
from txlock.cli._exit_codes import CONFIG, OK, CliError
from txlock.cli._output import Output, write
from txlock.cli._store import cli_error_for, open_store, translating_errors
from txlock.cli._top_model import (
    COLUMNS,
    RIGHT_ALIGNED,
    GrantRate,
    Snapshot,
    WaitWindow,
    header_fields,
    plain_lines,
    row_cells,
    row_json,
    take_snapshot,
)
from txlock.cli._waiting import Interrupted, interruptible

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["cmd_top"]

_MISSING_RICH = (
    "txlock top's live view needs rich: pip install 'txlock[cli]' "
    "(--once and --json, and output that is not a terminal, work without it)"
)
_QUIT_KEYS = b"qQ"
# Header lines, the blank line, the table's head, rule and the footer: what the screen
# keeps besides the rows.
_CHROME_LINES = 5


def cmd_top(output: Output, *, url: str | None, prefix: str | None, interval: float, once: bool) -> int:
    """``txlock top``: show the store's holds until ``q`` / Ctrl-C (or once)."""
    store = redact(url if url is not None else txlock.default_url())
    with translating_errors(url):
        manager = open_store(url)
        first = _look(manager, prefix)  # a store that cannot be read ends the command here
    if output.json:
        output.data([row_json(info, first.wall) for info in first.locks])
        return OK
    view = _View(manager, url, store, prefix, first)
    if once:
        _write_lines(view.plain())
        return OK
    waits = WaitWindow()
    txlock.add_observer(waits)  # this process's own acquisitions, if it makes any
    view.waits = waits
    try:
        with interruptible():
            if sys.stdout.isatty():
                _live(view, interval)
            else:
                _batch(view, interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is the ordinary way out
    except Interrupted as stop:
        return 128 + stop.signal_number
    finally:
        txlock.remove_observer(waits)
    return OK


def _look(manager: txlock.BaseLockManager, prefix: str | None) -> Snapshot:
    return take_snapshot(manager.list_locks(prefix), prefix=prefix)


@dataclass
class _View:
    """What one refresh shows: the latest snapshot, the rates so far, the last error."""

    manager: txlock.BaseLockManager
    url: str | None
    store: str
    prefix: str | None
    snapshot: Snapshot
    rate: GrantRate = field(default_factory=GrantRate)
    waits: WaitWindow | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self.rate.add(self.snapshot)

    def refresh(self) -> None:
        """Look at the store again; a failing store is reported in the header, and retried."""
        try:
            snapshot = _look(self.manager, self.prefix)
        except txlock.LockError as exception:
            error = cli_error_for(exception, self.url)
            self.error = str(exception) if error is None else error.message
            return
        self.error = None
        self.snapshot = snapshot
        self.rate.add(snapshot)

    def fields(self) -> list[tuple[str, str]]:
        """The header: the store, the keys, the rates, the waiters, the last error."""
        fields = header_fields(
            self.store,
            self.snapshot,
            acquisitions_per_second=self.rate.per_second(),
            counts_waiters=self.manager.capabilities.counts_waiters,
            waits=None if self.waits is None else self.waits.summary(),
        )
        if self.error is not None:
            fields.append(("error", f"{self.error} (showing the last good look; retrying)"))
        return fields

    def plain(self) -> list[str]:
        """The view as plain text lines."""
        return plain_lines(self.fields(), self.snapshot)


# ---------------------------------------------------------------------- plain text


def _write_lines(lines: list[str]) -> bool:
    """Write ``lines`` to stdout; ``False`` when nobody reads it any more (a closed pipe)."""
    try:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can be shown; stop Python's own flush at exit from complaining too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False
    except UnicodeEncodeError:
        write(sys.stdout, "".join(line + "\n" for line in lines))
    return True


def _batch(view: _View, interval: float) -> None:
    """Plain text for a stdout that is not a terminal: a snapshot per refresh, a blank line after each."""
    while _write_lines([*view.plain(), ""]):
        _pause(interval, None)
        view.refresh()


def _pause(seconds: float, keyboard: _Keyboard | None) -> bool:
    """Wait ``seconds``; ``True`` when the quit key was pressed meanwhile."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if keyboard is None or keyboard.fd is None:
            time.sleep(remaining)  # nothing to read: just the refresh interval
            return False
        if keyboard.quit_pressed(remaining):
            return True
    return False


# ---------------------------------------------------------------------- the terminal


class _Keyboard:
    """Keys pressed on stdin, read without waiting for Enter (cbreak mode) when stdin is a
    terminal; the terminal's settings come back when the block ends, however it ends."""

    def __init__(self, stream: TextIO | None) -> None:
        self.fd: int | None = None
        try:
            if stream is not None and stream.isatty():
                self.fd = stream.fileno()
        except (OSError, ValueError):  # closed or detached
            self.fd = None
        self._saved: list[Any] | None = None

    def __enter__(self) -> _Keyboard:
        if self.fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)  # keys one by one, no echo; Ctrl-C still interrupts
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._saved is not None and self.fd is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def quit_pressed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for keys; whether one of them was ``q``."""
        if self.fd is None:
            return False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        data = os.read(self.fd, 64)
        if not data:  # end of input: nothing more will come, refresh on the clock alone
            self.fd = None
            return False
        return any(byte in _QUIT_KEYS for byte in data)


@contextmanager
def _terminal() -> Iterator[tuple[Any, _Keyboard]]:
    """The full-screen live display (rich) and the keyboard, both undone on the way out."""
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError as exception:
        raise CliError(CONFIG, "missing_dependency", f"{_MISSING_RICH} ({exception})") from None
    console = Console(highlight=False)
    # SIGWINCH interrupts nothing here: rich reads the size at each refresh.
    with _Keyboard(sys.stdin) as keyboard, Live(
        console=console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
    ) as live:
        yield live, keyboard


def _live(view: _View, interval: float) -> None:
    """The full-screen view, refreshed every ``interval`` seconds until ``q``."""
    with _terminal() as (live, keyboard):
        while True:
            live.update(_render(view, interval, live.console.size.height, keyboard.fd is not None), refresh=True)
            if _pause(interval, keyboard):
                return
            view.refresh()


def _render(view: _View, interval: float, height: int, keys: bool) -> RenderableType:
    """One screen: the header, the held locks that fit (longest held first), the footer."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    fields = view.fields()
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold", no_wrap=True)
    header.add_column(overflow="ellipsis", no_wrap=True)
    for label, value in fields:
        header.add_row(Text(label), Text(value, style="red" if label == "error" else ""))

    snapshot = view.snapshot
    room = max(1, height - len(fields) - _CHROME_LINES - 1)
    shown_locks = snapshot.locks if len(snapshot.locks) <= room else snapshot.locks[: room - 1]
    locks = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold reverse")
    for number, name in enumerate(COLUMNS):
        locks.add_column(
            name, justify="right" if number in RIGHT_ALIGNED else "left", no_wrap=True, overflow="ellipsis"
        )
    for info in shown_locks:
        locks.add_row(*(Text(cell) for cell in row_cells(info, snapshot.wall)))

    parts: list[RenderableType] = [header, Text(""), locks]
    hidden = len(snapshot.locks) - len(shown_locks)
    if not snapshot.locks:
        parts.append(Text("(no locks held)", style="dim"))
    elif hidden:
        parts.append(Text(f"... and {hidden} more held for less long (txlock ls lists them all)", style="dim"))
    quit_how = "q or Ctrl-C quits" if keys else "Ctrl-C quits"
    seen = time.strftime("%H:%M:%S", time.localtime(snapshot.wall))
    parts.append(Text(f"{quit_how} · every {interval:g}s · longest held first · read at {seen}", style="dim"))
    return Group(*parts)
