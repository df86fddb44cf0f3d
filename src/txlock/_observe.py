"""Events and metrics hooks: what the managers tell observers, and how they reach them.

An *observer* is any object with an ``on_event(event)`` method (subclass :class:`Observer`
for one method per kind). Register one for a manager (``manager.add_observer``) or for every
manager of the process (``txlock.add_observer``). The manager base emits the events, not
the backends, so every backend reports the same things the same way:

============== ==========================================================================
kind           when, and what the event carries
============== ==========================================================================
acquired       a grant: ``token``, ``waited`` (seconds the call took, 0 when the first
               attempt won), ``contended`` (it had to wait for a holder)
timed_out      an acquire gave up: ``waited``
released       a release by the holder: ``held`` (seconds since the grant this process
               saw, when it saw it)
renewed        a ``lock()`` block's background renewal, or ``renew()``: ``token``
renewal_failed a renewal could not reach the store: ``error`` (the block keeps trying
               until its hold expires)
lost           a hold ended before its owner released it: ``token``, ``held``
force_released an operator's ``force_release`` freed the key
backend_error  a call failed in the store: ``error``
============== ==========================================================================

Cheap when nobody listens: the hot paths test one attribute and one list. An observer
that raises is logged and otherwise ignored: observing never changes what a lock does.
Events are delivered on the thread (or event loop) of the call that caused them; the
background renewal's on txlock's scheduler thread.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from txlock._errors import BackendError, LockTimeout

if TYPE_CHECKING:
    import logging

    from txlock._types import Lease

__all__ = [
    "EVENT_KINDS",
    "LockEvent",
    "ObservedAcquire",
    "Observation",
    "Observer",
    "ObserverLike",
    "add_observer",
    "lazy_logger",
    "note_contended",
    "observing",
    "remove_observer",
]

#: Every kind of event, in the order of a lock's life.
EVENT_KINDS = (
    "acquired",
    "timed_out",
    "released",
    "renewed",
    "renewal_failed",
    "lost",
    "force_released",
    "backend_error",
)


class LockEvent(NamedTuple):
    """One thing that happened to a lock, as an observer receives it.

    Attributes:
        kind: one of :data:`EVENT_KINDS`.
        backend: the manager's URL scheme (``memory``, ``file``, ``sqlite``, ``redis``,
            ``postgresql``): a bounded label for metrics.
        key: the lock's key (unbounded: do not use it as a metrics label as it is).
        holder: the holder, when the event concerns one.
        token: the fencing token of the grant, when known.
        waited: seconds an acquire took (``acquired``, ``timed_out``).
        held: seconds since the grant, as this process saw it (``released``, ``lost``).
        contended: the acquire had to wait for another holder (``acquired``).
        error: the exception (``renewal_failed``, ``backend_error``).
    """

    kind: str
    backend: str
    key: str
    holder: str | None = None
    token: int | None = None
    waited: float | None = None
    held: float | None = None
    contended: bool = False
    error: BaseException | None = None


@runtime_checkable
class ObserverLike(Protocol):
    """What txlock needs of an observer: one method."""

    def on_event(self, event: LockEvent) -> None:
        """Receive one event. Called on the thread of the call that caused it; keep it quick."""


class Observer:
    """A base class for observers: :meth:`on_event` calls ``on_<kind>(event)``; override the
    kinds you care about (each does nothing by default)."""

    def on_event(self, event: LockEvent) -> None:
        """Dispatch ``event`` to the method of its kind."""
        getattr(self, "on_" + event.kind)(event)

    def on_acquired(self, event: LockEvent) -> None:
        """A grant."""

    def on_timed_out(self, event: LockEvent) -> None:
        """An acquire that gave up."""

    def on_released(self, event: LockEvent) -> None:
        """A release by the holder."""

    def on_renewed(self, event: LockEvent) -> None:
        """A renewal."""

    def on_renewal_failed(self, event: LockEvent) -> None:
        """A renewal that could not reach the store."""

    def on_lost(self, event: LockEvent) -> None:
        """A hold that ended before its owner released it."""

    def on_force_released(self, event: LockEvent) -> None:
        """An operator's force-release."""

    def on_backend_error(self, event: LockEvent) -> None:
        """A call that failed in the store."""


#: The observers of every manager of this process (``add_observer``). One list object for
#: the life of the process (the managers test it for emptiness on their hot paths); it is
#: changed in place under a mutex, and read as a copy.
process_observers: list[ObserverLike] = []
_registry_mutex = threading.Lock()


def add_observer(observer: ObserverLike) -> None:
    """Send the events of every manager of this process to ``observer``."""
    _check(observer)
    with _registry_mutex:
        if observer not in process_observers:
            process_observers.append(observer)


def remove_observer(observer: ObserverLike) -> None:
    """Stop sending events to an observer added with :func:`add_observer` (no-op if absent)."""
    with _registry_mutex:
        process_observers[:] = [o for o in process_observers if o is not observer]


def _check(observer: object) -> None:
    if not callable(getattr(observer, "on_event", None)):
        raise TypeError(
            f"an observer needs an on_event(event) method; {type(observer).__name__} has none "
            "(subclass txlock.Observer)"
        )


class _LazyLogger:
    """``logging.getLogger(name)``, looked up (and logging imported) at its first use."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(self._name)
        return getattr(logger, attr)


def lazy_logger(name: str) -> logging.Logger:
    """What ``logging.getLogger(name)`` returns, for a module's top level, without importing
    :mod:`logging` until the module first logs: the import costs every process several
    milliseconds of start-up (it pulls in ``traceback``, ``linecache``, ``tokenize``...),
    and most processes never log a line."""
    return cast("logging.Logger", _LazyLogger(name))


class Observation:
    """What an observed acquire learns while it runs (see :data:`observing`)."""

    __slots__ = ("contended",)

    def __init__(self) -> None:
        self.contended = False


#: Set while an observed acquire runs its unobserved body: the body then skips the
#: observers test it would otherwise repeat, and notes what the observers want to know.
observing: ContextVar[Observation | None] = ContextVar("txlock_observing", default=None)


def note_contended() -> None:
    """An acquire's first attempt found the key held (the waiting loop calls it): an
    observed acquire reports its grant as contended."""
    observation = observing.get()
    if observation is not None:
        observation.contended = True


class Emitter:
    """A manager's link to its observers: the events it sends and the grant times it keeps
    to tell how long a hold lasted (only while someone observes)."""

    __slots__ = ("backend", "grants", "observers")

    #: Grant times kept at most; past it the oldest are forgotten (``held`` is then unknown).
    MAX_GRANTS = 100_000

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.observers: tuple[ObserverLike, ...] = ()
        self.grants: dict[tuple[str, str], float] = {}

    def add(self, observer: ObserverLike) -> None:
        _check(observer)
        if observer not in self.observers:
            self.observers = (*self.observers, observer)

    def remove(self, observer: ObserverLike) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def emit(self, event: LockEvent) -> None:
        for observer in (*self.observers, *process_observers):
            try:
                observer.on_event(event)
            except Exception:  # observing must never change what a lock does
                import logging  # here: importing logging costs start-up time to everyone else

                logging.getLogger("txlock.observe").exception(
                    "txlock observer %r failed on %s event", observer, event.kind
                )

    def acquired(self, key: str, holder: str, token: int, waited: float, contended: bool) -> None:
        grants = self.grants
        if len(grants) >= self.MAX_GRANTS:
            grants.clear()
        grants[key, holder] = time.monotonic()
        self.emit(LockEvent("acquired", self.backend, key, holder, token, waited, None, contended))

    def held_for(self, key: str, holder: str) -> float | None:
        """Seconds since the grant of ``key`` to ``holder`` seen here (forgotten now)."""
        granted = self.grants.pop((key, holder), None)
        return None if granted is None else time.monotonic() - granted

    def released(self, key: str, holder: str) -> None:
        self.emit(LockEvent("released", self.backend, key, holder, held=self.held_for(key, holder)))

    def simple(self, kind: str, key: str, holder: str | None = None, token: int | None = None,
               error: BaseException | None = None, waited: float | None = None) -> None:
        if not (self.observers or process_observers):
            return  # the background renewal reports unconditionally: nobody listens
        held = self.held_for(key, holder) if kind == "lost" and holder is not None else None
        self.emit(LockEvent(kind, self.backend, key, holder, token, waited, held, False, error))


class ObservedAcquire:
    """``with ObservedAcquire(manager, key, holder) as observed:`` around an acquire's
    unobserved body (which sets ``observed.lease``): times it and tells the observers how
    it ended (acquired, timed out, or a store error)."""

    __slots__ = ("emitter", "holder", "key", "lease", "observation", "reset", "start")

    def __init__(self, emitter: Emitter, key: str, holder: str) -> None:
        self.emitter, self.key, self.holder = emitter, key, holder
        self.lease: Lease | None = None

    def __enter__(self) -> ObservedAcquire:
        self.observation = Observation()
        self.reset = observing.set(self.observation)
        self.start = time.monotonic()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        waited = time.monotonic() - self.start
        observing.reset(self.reset)
        if isinstance(exc, BackendError):
            self.emitter.simple("backend_error", self.key, self.holder, error=exc)
        elif isinstance(exc, LockTimeout) or (exc is None and self.lease is None):
            self.emitter.simple("timed_out", self.key, self.holder, waited=waited)
        elif exc is None and self.lease is not None:
            self.emitter.acquired(self.key, self.holder, self.lease.token, waited, self.observation.contended)
