"""OpenTelemetry metrics and spans of txlock's lock events (the ``txlock[otel]`` extra).

Only ``opentelemetry-api`` is needed: with no provider passed, the observer uses the global
providers, so whatever SDK the application configures (before or after the observer is
made) receives the measurements and spans; without an SDK they cost next to nothing::

    import txlock
    from txlock.observers.otel import OpenTelemetryObserver

    txlock.add_observer(OpenTelemetryObserver())

Metrics (instrumentation scope ``txlock``; attributes ``txlock.backend``, the manager's URL
scheme, and where listed ``txlock.outcome``, ``txlock.contended``, ``error.type``):

=========================  =========  ==========================================================
instrument                 kind       what
=========================  =========  ==========================================================
``txlock.acquisitions``    counter    acquire calls that ended; outcome ``acquired`` / ``timed_out``
``txlock.releases``        counter    releases by the holder
``txlock.renewals``        counter    renewals; outcome ``renewed`` / ``failed``
``txlock.lost_locks``      counter    holds that ended before their owner released them
``txlock.force_releases``  counter    ``force_release`` calls that freed a key
``txlock.backend_errors``  counter    calls that failed in the store; ``error.type``
``txlock.wait.duration``   histogram  seconds an acquire call took; contended, outcome
``txlock.hold.duration``   histogram  seconds from grant to release or loss; outcome
=========================  =========  ==========================================================

Spans (tracer ``txlock``):

* ``txlock wait``: one per acquire that had to wait (a contended grant, or a timeout),
  from the call's start to its end; outcome ``acquired`` or ``timed_out``.
* ``txlock hold``: one per grant, from ``acquired`` to ``released``, ``lost`` or
  ``force_released`` (status ERROR for the last two); renewals are span events on it.
  Holds are tracked by (backend, key, holder), at most ``max_open_holds`` at once: past
  that the oldest span is ended with outcome ``untracked``.

Spans carry the key (``txlock.key``), the holder and the fencing token. Metrics never do:
they are aggregated per attribute set, so an unbounded key would make a new time series per
key; a span is one record per wait or hold, which tracing back ends sample and index
(``keys_on_spans=False`` leaves the key out where keys are sensitive). Both
spans are children of the span current where the event happened (the acquiring call's),
and neither is made current.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from txlock import __version__
from txlock._observe import EVENT_KINDS, LockEvent, Observer
from txlock.observers._common import HOLD_BUCKETS, WAIT_BUCKETS, error_type, missing_dependency

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import Counter
    from opentelemetry.trace import Span, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the extra is installed in the test run
    raise missing_dependency(__name__, "opentelemetry-api", "otel", exc) from exc

__all__ = ["HOLD_BUCKETS", "WAIT_BUCKETS", "OpenTelemetryObserver"]

Attributes = Mapping[str, str | bool]


class OpenTelemetryObserver(Observer):
    """Metrics and spans of lock events through the OpenTelemetry API.

    Args:
        meter_provider: where the instruments come from (default: the global provider,
            which forwards to the SDK's once the application sets one).
        tracer_provider: where the spans go (default: the global provider, likewise).
        max_open_holds: hold spans kept open at most (a hold whose release this process
            never sees would otherwise be kept forever).
        keys_on_spans: put the key on spans (``txlock.key``); ``False`` where keys are
            sensitive (spans still carry the backend, holder and token).
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        max_open_holds: int = 10_000,
        keys_on_spans: bool = True,
    ) -> None:
        if max_open_holds < 1:
            raise ValueError(f"max_open_holds must be at least 1, got {max_open_holds!r}")
        meter = metrics.get_meter("txlock", __version__, meter_provider)
        self.tracer = trace.get_tracer("txlock", __version__, tracer_provider)
        self.max_open_holds = max_open_holds
        self.keys_on_spans = keys_on_spans
        self.acquisitions = meter.create_counter(
            "txlock.acquisitions", "{acquisition}", "txlock acquire calls that ended, by outcome"
        )
        self.releases = meter.create_counter("txlock.releases", "{release}", "txlock releases by the holder")
        self.renewals = meter.create_counter("txlock.renewals", "{renewal}", "txlock hold renewals, by outcome")
        self.lost_locks = meter.create_counter(
            "txlock.lost_locks", "{hold}", "txlock holds that ended before their owner released them"
        )
        self.force_releases = meter.create_counter(
            "txlock.force_releases", "{release}", "txlock force_release calls that freed a key"
        )
        self.backend_errors = meter.create_counter(
            "txlock.backend_errors", "{error}", "txlock calls that failed in the store"
        )
        self.wait_duration = meter.create_histogram(
            "txlock.wait.duration", "s", "seconds a txlock acquire call took",
            explicit_bucket_boundaries_advisory=list(WAIT_BUCKETS),
        )
        self.hold_duration = meter.create_histogram(
            "txlock.hold.duration", "s", "seconds from a txlock grant to its release or loss",
            explicit_bucket_boundaries_advisory=list(HOLD_BUCKETS),
        )
        #: Open hold spans by (backend, key, holder), oldest first.
        self._holds: dict[tuple[str, str, str | None], Span] = {}
        self._holds_mutex = threading.Lock()
        #: Metric attribute sets by their values (a bounded set: backends x outcomes).
        self._attribute_sets: dict[tuple[object, ...], Attributes] = {}
        self._handlers: dict[str, Callable[[LockEvent], None]] = {
            kind: getattr(self, "on_" + kind) for kind in EVENT_KINDS
        }

    def __repr__(self) -> str:
        return f"<OpenTelemetryObserver holds open={len(self._holds)}>"

    def _attributes(self, backend: str, outcome: str | None = None, contended: bool | None = None,
                    error: str | None = None) -> Attributes:
        """The (cached) metric attributes for these values."""
        values = (backend, outcome, contended, error)
        found = self._attribute_sets.get(values)
        if found is None:
            made: dict[str, str | bool] = {"txlock.backend": backend}
            if outcome is not None:
                made["txlock.outcome"] = outcome
            if contended is not None:
                made["txlock.contended"] = contended
            if error is not None:
                made["error.type"] = error
            found = self._attribute_sets[values] = made
        return found

    def _span_attributes(self, event: LockEvent) -> dict[str, str | int]:
        found: dict[str, str | int] = {"txlock.backend": event.backend}
        if self.keys_on_spans:
            found["txlock.key"] = event.key
        if event.holder is not None:
            found["txlock.holder"] = event.holder
        if event.token is not None:
            found["txlock.token"] = event.token
        return found

    # ------------------------------------------------------------------ events

    def on_event(self, event: LockEvent) -> None:
        """Record ``event``'s measurements and spans."""
        self._handlers[event.kind](event)

    def on_acquired(self, event: LockEvent) -> None:
        """Count the grant, record its wait, span the wait if it had to, open the hold span."""
        self.acquisitions.add(1, self._attributes(event.backend, "acquired"))
        waited = event.waited or 0.0
        self.wait_duration.record(waited, self._attributes(event.backend, "acquired", event.contended))
        now = time.time_ns()
        if event.contended:
            self._wait_span(event, "acquired", waited, now)
        span = self.tracer.start_span("txlock hold", start_time=now, attributes=self._span_attributes(event))
        ident = (event.backend, event.key, event.holder)
        with self._holds_mutex:
            replaced = self._holds.pop(ident, None)  # a grant to the holder again
            self._holds[ident] = span
            evicted = self._holds.pop(next(iter(self._holds))) if len(self._holds) > self.max_open_holds else None
        if replaced is not None:
            self._end_hold(replaced, "reacquired", now)
        if evicted is not None:
            self._end_hold(evicted, "untracked", now)

    def on_timed_out(self, event: LockEvent) -> None:
        """Count the timeout, record its wait and span it (the key was held)."""
        self.acquisitions.add(1, self._attributes(event.backend, "timed_out"))
        waited = event.waited or 0.0
        self.wait_duration.record(waited, self._attributes(event.backend, "timed_out", True))
        self._wait_span(event, "timed_out", waited, time.time_ns())

    def on_released(self, event: LockEvent) -> None:
        """Count the release, record the hold time and end the hold span."""
        self._hold_ended(event, self.releases, "released")

    def on_renewed(self, event: LockEvent) -> None:
        """Count the renewal; a span event on the hold span."""
        self.renewals.add(1, self._attributes(event.backend, "renewed"))
        self._hold_event(event, "renewed", {"txlock.token": event.token} if event.token is not None else None)

    def on_renewal_failed(self, event: LockEvent) -> None:
        """Count the failed renewal; a span event on the hold span, with the error."""
        self.renewals.add(1, self._attributes(event.backend, "failed"))
        self._hold_event(event, "renewal failed", {"error.type": error_type(event)})

    def on_lost(self, event: LockEvent) -> None:
        """Count the loss, record the hold time and end the hold span with status ERROR."""
        self._hold_ended(event, self.lost_locks, "lost", "the hold ended before its owner released it")

    def on_force_released(self, event: LockEvent) -> None:
        """Count the force-release and end this process's hold spans of the key (ERROR)."""
        self.force_releases.add(1, self._attributes(event.backend))
        with self._holds_mutex:
            idents = [i for i in self._holds if i[0] == event.backend and i[1] == event.key]
            spans = [self._holds.pop(i) for i in idents]
        for span in spans:
            self._end_hold(span, "force_released", error="force-released")

    def on_backend_error(self, event: LockEvent) -> None:
        """Count the failed call, with ``error.type`` (the exception's class name)."""
        self.backend_errors.add(1, self._attributes(event.backend, error=error_type(event)))

    # ------------------------------------------------------------------ spans

    def _wait_span(self, event: LockEvent, outcome: str, waited: float, end: int) -> None:
        attributes = self._span_attributes(event)
        attributes["txlock.outcome"] = outcome
        start = end - int(waited * 1e9)
        self.tracer.start_span("txlock wait", start_time=start, attributes=attributes).end(end_time=end)

    def _hold_ended(self, event: LockEvent, counter: Counter, outcome: str, error: str | None = None) -> None:
        """Count a hold's end on ``counter``, record its length (when known), end its span."""
        counter.add(1, self._attributes(event.backend))
        if event.held is not None:
            self.hold_duration.record(event.held, self._attributes(event.backend, outcome))
        with self._holds_mutex:
            span = self._holds.pop((event.backend, event.key, event.holder), None)
        if span is not None:
            self._end_hold(span, outcome, error=error)

    def _hold_event(self, event: LockEvent, name: str, attributes: Mapping[str, str | int] | None) -> None:
        with self._holds_mutex:
            span = self._holds.get((event.backend, event.key, event.holder))
        if span is not None:
            span.add_event(name, attributes)

    @staticmethod
    def _end_hold(span: Span, outcome: str, end: int | None = None, error: str | None = None) -> None:
        span.set_attribute("txlock.outcome", outcome)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

