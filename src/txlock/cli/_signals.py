"""Signal handlers installed for the length of a block."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

__all__ = ["handling_signals"]


@contextmanager
def handling_signals(signal_numbers: Iterable[int], handler: Callable[[int, object], None]) -> Iterator[None]:
    """Let ``handler`` take ``signal_numbers`` inside the block (not those ignored: ``nohup``)."""
    saved = {}
    for signal_number in signal_numbers:
        if signal.getsignal(signal_number) is not signal.SIG_IGN:
            saved[signal_number] = signal.signal(signal_number, handler)
    try:
        yield
    finally:
        for signal_number, previous in saved.items():
            signal.signal(signal_number, previous)
