"""Prometheus metrics of txlock's lock events (the ``txlock[prometheus]`` extra).

::

    from prometheus_client import start_http_server
    import txlock
    from txlock.observers.prometheus import PrometheusObserver

    txlock.add_observer(PrometheusObserver())   # every manager of this process
    start_http_server(9100)

The metrics (with the default ``namespace="txlock"``):

==================================  ====================================  ====================
metric                              what it counts or measures             labels
==================================  ====================================  ====================
``txlock_acquisitions_total``       acquire calls that ended               outcome: ``acquired``,
                                                                           ``timed_out``
``txlock_releases_total``           releases by the holder
``txlock_renewals_total``           renewals                               outcome: ``renewed``,
                                                                           ``failed``
``txlock_lost_locks_total``         holds that ended before their release
``txlock_force_releases_total``     ``force_release`` calls that freed a key
``txlock_backend_errors_total``     calls that failed in the store         error: the exception
                                                                           class
``txlock_wait_seconds``             seconds an acquire call took           contended, outcome
``txlock_hold_seconds``             seconds from grant to release or loss  outcome: ``released``,
                                                                           ``lost``
==================================  ====================================  ====================

Every metric has a ``backend`` label (the manager's URL scheme). The key is never a label
unless ``key_label`` is given: keys are unbounded, and a label per key would grow the
registry without end. ``key_label`` maps a key to a *bounded* value (a prefix, a tenant),
added as a ``key`` label to every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from txlock._observe import EVENT_KINDS, LockEvent, Observer
from txlock.observers._common import HOLD_BUCKETS, WAIT_BUCKETS, error_type, missing_dependency

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as exc:  # pragma: no cover - the extra is installed in the test run
    raise missing_dependency(__name__, "prometheus-client", "prometheus", exc) from exc

__all__ = ["HOLD_BUCKETS", "WAIT_BUCKETS", "PrometheusObserver"]


class _Series:
    """Every metric's child for one set of common label values (a backend, and the key label
    when one is used), made together on the first event: the hot path then does one dict
    lookup per event, and every series exists, at 0, from then on (as alert rules like:
    ``increase()`` of a series that appears at 1 misses its first event)."""

    __slots__ = (
        "acquired", "errors", "family", "forced", "hold_lost", "hold_released", "labels", "lost",
        "released", "renewal_failed", "renewed", "timed_out", "wait_contended", "wait_timed_out",
        "wait_uncontended",
    )

    def __init__(self, observer: PrometheusObserver, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.acquired = observer.acquisitions.labels(*labels, "acquired")
        self.timed_out = observer.acquisitions.labels(*labels, "timed_out")
        self.wait_uncontended = observer.wait_seconds.labels(*labels, "false", "acquired")
        self.wait_contended = observer.wait_seconds.labels(*labels, "true", "acquired")
        self.wait_timed_out = observer.wait_seconds.labels(*labels, "true", "timed_out")
        self.released = observer.releases.labels(*labels)
        self.hold_released = observer.hold_seconds.labels(*labels, "released")
        self.renewed = observer.renewals.labels(*labels, "renewed")
        self.renewal_failed = observer.renewals.labels(*labels, "failed")
        self.lost = observer.lost_locks.labels(*labels)
        self.hold_lost = observer.hold_seconds.labels(*labels, "lost")
        self.forced = observer.force_releases.labels(*labels)
        self.family = observer.backend_errors
        self.errors: dict[str, Counter] = {}  # by exception class: made as they occur

    def error(self, name: str) -> Counter:
        found = self.errors.get(name)
        if found is None:  # two threads may both get here: labels() returns the same child
            found = self.errors[name] = self.family.labels(*self.labels, name)
        return found


class PrometheusObserver(Observer):
    """Counters and histograms of lock events in a Prometheus registry.

    Args:
        registry: where the metrics are registered (default: prometheus-client's global
            ``REGISTRY``). One observer per registry and namespace: a second one would
            register the same names twice, which prometheus-client refuses.
        namespace: the prefix of every metric name.
        key_label: a function from a key to a *bounded* label value (a prefix, a tenant);
            when given, every metric gets a ``key`` label with its result. Never pass the
            identity: keys are unbounded.
        wait_buckets: the buckets of ``<namespace>_wait_seconds``.
        hold_buckets: the buckets of ``<namespace>_hold_seconds``.

    Attributes:
        registry: the registry the metrics live in.
        acquisitions, releases, renewals, lost_locks, force_releases, backend_errors: the
            counters; wait_seconds, hold_seconds: the histograms (prometheus-client objects,
            label names as in the module's table).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "txlock",
        key_label: Callable[[str], str] | None = None,
        wait_buckets: Sequence[float] = WAIT_BUCKETS,
        hold_buckets: Sequence[float] = HOLD_BUCKETS,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.key_label = key_label
        common = ("backend", "key") if key_label is not None else ("backend",)

        def counter(name: str, help_text: str, *labels: str) -> Counter:
            return Counter(name, help_text, (*common, *labels), namespace=namespace, registry=self.registry)

        def histogram(name: str, help_text: str, buckets: Sequence[float], *labels: str) -> Histogram:
            return Histogram(
                name, help_text, (*common, *labels), namespace=namespace, registry=self.registry, buckets=buckets
            )

        self.acquisitions = counter("acquisitions", "txlock acquire calls that ended, by outcome", "outcome")
        self.releases = counter("releases", "txlock releases by the holder")
        self.renewals = counter("renewals", "txlock hold renewals, by outcome (renewed, failed)", "outcome")
        self.lost_locks = counter("lost_locks", "txlock holds that ended before their owner released them")
        self.force_releases = counter("force_releases", "txlock force_release calls that freed a key")
        self.backend_errors = counter("backend_errors", "txlock calls that failed in the store, by error", "error")
        self.wait_seconds = histogram(
            "wait_seconds", "seconds a txlock acquire call took (contended: it waited for a holder)",
            wait_buckets, "contended", "outcome",
        )
        self.hold_seconds = histogram(
            "hold_seconds", "seconds from a txlock grant to its release or loss", hold_buckets, "outcome"
        )
        #: The series by backend (or by (backend, key label) with ``key_label``).
        self._series: dict[object, _Series] = {}
        self._handlers: dict[str, Callable[[LockEvent], None]] = {
            kind: getattr(self, "on_" + kind) for kind in EVENT_KINDS
        }

    def __repr__(self) -> str:
        return f"<PrometheusObserver registry={self.registry!r}>"

    def _for(self, event: LockEvent) -> _Series:
        """The series of ``event``'s backend (and key label)."""
        if self.key_label is None:
            found = self._series.get(event.backend)
            if found is None:
                found = self._series[event.backend] = _Series(self, (event.backend,))
            return found
        labels = (event.backend, str(self.key_label(event.key)))
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = _Series(self, labels)
        return found

    def on_event(self, event: LockEvent) -> None:
        """Update the metrics of ``event``'s kind."""
        self._handlers[event.kind](event)

    def on_acquired(self, event: LockEvent) -> None:
        """Count the grant and record its wait, labelled contended or not."""
        series = self._for(event)
        series.acquired.inc()
        (series.wait_contended if event.contended else series.wait_uncontended).observe(event.waited or 0.0)

    def on_timed_out(self, event: LockEvent) -> None:
        """Count the timeout and record its wait (always contended: the key was held)."""
        series = self._for(event)
        series.timed_out.inc()
        series.wait_timed_out.observe(event.waited or 0.0)

    def on_released(self, event: LockEvent) -> None:
        """Count the release and record the hold time (when this process saw the grant)."""
        series = self._for(event)
        _ended(series.released, series.hold_released, event.held)

    def on_lost(self, event: LockEvent) -> None:
        """Count the lost hold and record how long it lasted (when known)."""
        series = self._for(event)
        _ended(series.lost, series.hold_lost, event.held)

    def on_renewed(self, event: LockEvent) -> None:
        """Count a renewal that succeeded."""
        self._for(event).renewed.inc()

    def on_renewal_failed(self, event: LockEvent) -> None:
        """Count a renewal that could not reach the store."""
        self._for(event).renewal_failed.inc()

    def on_force_released(self, event: LockEvent) -> None:
        """Count a force-release that freed a key."""
        self._for(event).forced.inc()

    def on_backend_error(self, event: LockEvent) -> None:
        """Count a failed call, labelled with the exception's class name (a bounded set)."""
        self._for(event).error(error_type(event)).inc()


def _ended(count: Counter, hold: Histogram, held: float | None) -> None:
    """A hold ended: count it, and record how long it lasted when that is known."""
    count.inc()
    if held is not None:
        hold.observe(held)
