"""The deadline of the current call, carried down to the stores' network calls.

An acquire or wait with a timeout sets the monotonic time by which it must end, for the
whole call, in a context variable. A store whose calls can stall (a network server, a
SQLite file kept locked by another process) reads :func:`call_budget` and cuts each of its
own waits to the time left plus :data:`DEADLINE_MARGIN`, so a mute server cannot keep a call
past its deadline. Worker threads started with ``asyncio.to_thread`` copy the context, so
they see the same deadline.
"""

from __future__ import annotations

import math
import time
from contextvars import ContextVar, Token

__all__ = [
    "DEADLINE_MARGIN",
    "DeadlineScope",
    "PatientScope",
    "call_budget",
    "connection_taken",
    "deadline_scope",
    "is_patient",
    "monotonic_deadline",
    "queue_budget",
]

#: Seconds past its deadline that an acquire or wait may take when the store does not
#: answer: every network call it makes is cut off after the time left plus this margin, so
#: one round trip always gets a fair chance, even with ``timeout=0``.
DEADLINE_MARGIN = 1.0

#: The monotonic time by which the current acquire or wait must end (``None``: no deadline).
_call_deadline: ContextVar[float | None] = ContextVar("txlock_call_deadline", default=None)
#: The margin granted past that deadline (0 for a hard deadline: a lease renewal).
_call_margin: ContextVar[float] = ContextVar("txlock_call_margin", default=DEADLINE_MARGIN)

#: True inside a :class:`PatientScope`: waiting for a connection is not bounded.
_queue_patient: ContextVar[bool] = ContextVar("txlock_queue_patient", default=False)

#: The least budget a network call is given, even past a hard deadline (a zero socket
#: timeout would mean "do not block" to some drivers, not "give up now").
MIN_BUDGET = 0.001


def call_budget() -> float | None:
    """Seconds the current network call may take, or ``None`` when nothing bounds it."""
    deadline = _call_deadline.get()
    if deadline is None:
        return None
    return max(deadline - time.monotonic() + _call_margin.get(), MIN_BUDGET)


def queue_budget() -> float | None:
    """Seconds the current call may wait for a free connection before it sends anything,
    or ``None`` when nothing bounds it: until its deadline plus half the margin, so that a
    request sent at the last moment still has the other half for its round trip. Inside a
    :class:`PatientScope`, unbounded."""
    deadline = _call_deadline.get()
    if deadline is None or _queue_patient.get():
        return None
    return max(deadline - time.monotonic() + _call_margin.get() / 2, MIN_BUDGET)


def is_patient() -> bool:
    """Whether the current request runs inside a :class:`PatientScope`."""
    return _queue_patient.get()


def connection_taken() -> None:
    """Tell the deadline that the current call now has its connection: inside a
    :class:`PatientScope`, its round trip gets the whole margin from now on."""
    if _queue_patient.get():
        _call_deadline.set(time.monotonic())


def monotonic_deadline(timeout: float | None) -> float:
    """The ``time.monotonic()`` reading at which a wait of ``timeout`` seconds ends."""
    if timeout is None or math.isinf(timeout):
        return math.inf
    return time.monotonic() + timeout


class DeadlineScope:
    """``with DeadlineScope(seconds):`` sets the call deadline for the block.

    ``margin`` is the time a network call may take past it (:data:`DEADLINE_MARGIN` for an
    acquire or wait; ``0`` for a lease renewal, which must end by the time the lease does).
    """

    __slots__ = ("deadline", "margin", "margin_token", "reset_token")

    def __init__(self, seconds: float, margin: float = DEADLINE_MARGIN) -> None:
        self.deadline = time.monotonic() + seconds
        self.margin = margin

    def __enter__(self) -> None:
        self.reset_token: Token[float | None] = _call_deadline.set(self.deadline)
        self.margin_token: Token[float] | None = (
            None if self.margin == DEADLINE_MARGIN else _call_margin.set(self.margin)
        )

    def __exit__(self, *exc: object) -> None:
        _call_deadline.reset(self.reset_token)
        if self.margin_token is not None:
            _call_margin.reset(self.margin_token)


class PatientScope:
    """``with PatientScope():`` for a request that must be made whatever the call's own
    deadline (withdrawing a queue entry, releasing a grant while a call ends): it waits for
    a connection in turn, however long the queue, and its round trip, once sent, gets
    :data:`DEADLINE_MARGIN` (a mute server still cannot keep it)."""

    __slots__ = ("deadline_token", "patient_token")

    def __enter__(self) -> None:
        self.deadline_token: Token[float | None] = _call_deadline.set(time.monotonic())
        self.patient_token: Token[bool] = _queue_patient.set(True)

    def __exit__(self, *exc: object) -> None:
        _queue_patient.reset(self.patient_token)
        _call_deadline.reset(self.deadline_token)


def deadline_scope(seconds: float | None) -> DeadlineScope | None:
    """The scope that carries a call's deadline down to the store's calls, or ``None`` when
    there is none to carry: no timeout, or a deadline already set by the call around this one."""
    if seconds is None or seconds == math.inf or _call_deadline.get() is not None:
        return None
    return DeadlineScope(seconds)
