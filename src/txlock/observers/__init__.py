"""Ready observers of txlock's lock events, each behind an optional extra.

* ``txlock.observers.prometheus.PrometheusObserver``: counters and histograms with
  ``prometheus-client`` (install ``txlock[prometheus]``);
* ``txlock.observers.otel.OpenTelemetryObserver``: metrics, and spans around waits and
  holds, through ``opentelemetry-api`` (install ``txlock[otel]``).

Import the module of the one you use. This package imports nothing itself, so neither
``import txlock`` nor ``import txlock.observers`` loads ``prometheus_client`` or
``opentelemetry``; importing an observer module whose package is missing raises
:class:`txlock.MissingDependency` naming the extra. Register an observer for one manager
(``manager.add_observer(observer)``) or for every manager of the process
(``txlock.add_observer(observer)``). The events are described in :mod:`txlock._observe`,
the metrics in docs/operations.md ("Metrics and events").
"""
