"""The observers of lock events: the core (registration, isolation of a failing observer)
and the two ready ones (Prometheus, OpenTelemetry), on every backend with real contention.

Each observer test registers its observer on the test's own manager and reads a registry or
an in-memory exporter of its own, so tests never see each other's measurements.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import txlock
from conftest import Api, eventually, need_module
from test_conformance import Background, parked

# ---------------------------------------------------------------- helpers


class Recorder(txlock.Observer):
    """Keeps every event it receives."""

    def __init__(self) -> None:
        self.events: list[txlock.LockEvent] = []

    def on_event(self, event: txlock.LockEvent) -> None:
        self.events.append(event)


@contextlib.contextmanager
def observed_by(manager: txlock.BaseLockManager, observer: txlock.ObserverLike) -> Iterator[None]:
    """``observer`` receives ``manager``'s events inside the block."""
    manager.add_observer(observer)
    try:
        yield
    finally:
        manager.remove_observer(observer)


def backend_label(manager: txlock.BaseLockManager) -> str:
    """The ``backend`` label / ``txlock.backend`` attribute of ``manager``'s events."""
    return manager.schemes[0]


def contend(api: Api, manager: txlock.BaseLockManager, key: str) -> None:
    """``a`` holds ``key``; ``b`` waits for it (seen waiting in the store or this process);
    ``a`` releases, ``b`` gets it and releases."""
    assert api.acquire_lock(key, "a")
    waiter = Background(lambda: api.acquire_lock(key, "b", acquire_timeout=30))
    eventually(parked(manager, key, 1), what="the waiter to wait")
    assert not waiter.done.is_set()
    api.release_lock(key, "a")
    assert waiter.get() is True
    api.release_lock(key, "b")


def lose_a_lock_block(manager: txlock.BaseLockManager, key: str) -> None:
    """Run a ``lock(ttl=...)`` block whose key is force-released under it, until its
    renewal finds the hold gone."""
    with pytest.raises(txlock.LockLost), manager.lock(key, "a", ttl=0.6) as held:
        assert manager.force_release(key)
        assert manager.acquire_lock(key, "thief")
        eventually(lambda: held.lost, what="the renewal to find the hold gone")


# ---------------------------------------------------------------- the core


class Exploding(txlock.Observer):
    def on_acquired(self, event: txlock.LockEvent) -> None:
        raise RuntimeError("observer exploded")


def test_an_observer_that_raises_does_not_break_an_acquire(
    manager: txlock.BaseLockManager, caplog: pytest.LogCaptureFixture
) -> None:
    after = Recorder()
    manager.add_observer(Exploding())
    manager.add_observer(after)
    with caplog.at_level(logging.ERROR, logger="txlock.observe"):
        assert manager.acquire_lock("k", "a")
    assert manager.is_lock_holder("k", "a")
    manager.release_lock("k", "a")
    assert not manager.is_locked("k")
    failures = [r for r in caplog.records if r.name == "txlock.observe" and r.exc_info]
    assert len(failures) == 1
    assert isinstance(failures[0].exc_info[1], RuntimeError)  # type: ignore[index]
    assert [e.kind for e in after.events] == ["acquired", "released"]  # the next observer still ran


def test_an_observer_needs_on_event() -> None:
    manager = txlock.from_url(f"memory://obs-{uuid.uuid4().hex}")
    try:
        with pytest.raises(TypeError, match="on_event"):
            manager.add_observer(object())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="on_event"):
            txlock.add_observer(object())  # type: ignore[arg-type]
    finally:
        manager.close()


def test_a_process_observer_sees_the_events_of_every_manager(manager: txlock.BaseLockManager) -> None:
    seen = Recorder()
    other = txlock.from_url(f"memory://obs-{uuid.uuid4().hex}")
    mine, theirs = f"mine-{uuid.uuid4().hex}", f"theirs-{uuid.uuid4().hex}"
    keys = {mine, theirs}
    txlock.add_observer(seen)
    try:
        assert manager.acquire_lock(mine, "a")
        manager.release_lock(mine, "a")
        assert other.acquire_lock(theirs, "b")
    finally:
        txlock.remove_observer(seen)
        other.close()
    events = [(e.kind, e.backend, e.key) for e in seen.events if e.key in keys]
    assert events == [
        ("acquired", backend_label(manager), mine),
        ("released", backend_label(manager), mine),
        ("acquired", "memory", theirs),
    ]
    assert manager.acquire_lock(mine, "c")
    assert len([e for e in seen.events if e.key in keys]) == 3  # removed: it hears no more


def test_importing_txlock_loads_no_observer_dependency() -> None:
    code = (
        "import sys, txlock, txlock.observers\n"
        "m = txlock.from_url('memory://')\n"
        "m.add_observer(txlock.Observer())\n"
        "m.acquire_lock('k', 'a'); m.release_lock('k', 'a')\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('prometheus_client', 'opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "package", "extra"),
    [
        ("txlock.observers.prometheus", "prometheus_client", "prometheus"),
        ("txlock.observers.otel", "opentelemetry", "otel"),
    ],
)
def test_a_missing_package_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # "not installed" for the import system
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(txlock.MissingDependency, match=rf"install txlock\[{extra}\]"):
        importlib.import_module(module)


# ---------------------------------------------------------------- Prometheus


class Prometheus:
    """A private registry with a :class:`PrometheusObserver`, and its samples."""

    def __init__(self, backend: str, **options: Any) -> None:
        need_module("prometheus_client", "prometheus")
        from prometheus_client import CollectorRegistry

        from txlock.observers.prometheus import PrometheusObserver

        self.backend = backend
        self.registry = CollectorRegistry()
        self.observer = PrometheusObserver(self.registry, **options)

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with ``labels`` (and this backend's), 0 when absent."""
        found = self.registry.get_sample_value(name, {"backend": self.backend, **labels})
        return 0.0 if found is None else found


@pytest.fixture
def prom(manager: txlock.BaseLockManager) -> Iterator[Prometheus]:
    """A Prometheus observer of the test's manager, with a registry of its own."""
    metrics = Prometheus(backend_label(manager))
    with observed_by(manager, metrics.observer):
        yield metrics


def test_prometheus_counts_acquisitions_and_a_contended_wait(
    api: Api, manager: txlock.BaseLockManager, prom: Prometheus, request: pytest.FixtureRequest
) -> None:
    contend(api, manager, "k")
    assert prom.value("txlock_acquisitions_total", outcome="acquired") == 2
    assert prom.value("txlock_wait_seconds_count", contended="false", outcome="acquired") == 1
    assert prom.value("txlock_wait_seconds_count", contended="true", outcome="acquired") == 1
    assert prom.value("txlock_wait_seconds_sum", contended="true", outcome="acquired") > 0
    assert prom.value("txlock_releases_total") == 2
    assert prom.value("txlock_hold_seconds_count", outcome="released") == 2
    assert prom.value("txlock_acquisitions_total", outcome="timed_out") == 0


def test_prometheus_counts_a_timeout(api: Api, prom: Prometheus) -> None:
    assert api.acquire_lock("k", "a")
    assert not api.acquire_lock("k", "b", acquire_timeout=0.05)
    assert prom.value("txlock_acquisitions_total", outcome="timed_out") == 1
    assert prom.value("txlock_wait_seconds_count", contended="true", outcome="timed_out") == 1
    assert prom.value("txlock_wait_seconds_sum", contended="true", outcome="timed_out") >= 0.045


def test_prometheus_records_the_hold_time_of_a_release(api: Api, prom: Prometheus) -> None:
    start = time.monotonic()
    assert api.acquire_lock("k", "a")
    api.release_lock("k", "a")
    elapsed = time.monotonic() - start
    assert prom.value("txlock_hold_seconds_count", outcome="released") == 1
    assert 0 <= prom.value("txlock_hold_seconds_sum", outcome="released") <= elapsed


def test_prometheus_counts_the_renewals_of_a_lock_block(manager: txlock.BaseLockManager, prom: Prometheus) -> None:
    with manager.lock("k", "a", ttl=0.6) as held:
        eventually(lambda: prom.value("txlock_renewals_total", outcome="renewed") >= 1, what="a renewal")
        assert not held.lost
    assert prom.value("txlock_renewals_total", outcome="failed") == 0
    assert prom.value("txlock_lost_locks_total") == 0


def test_prometheus_counts_a_lost_lock(manager: txlock.BaseLockManager, prom: Prometheus) -> None:
    lose_a_lock_block(manager, "k")
    assert prom.value("txlock_lost_locks_total") == 1
    assert prom.value("txlock_force_releases_total") == 1
    assert prom.value("txlock_hold_seconds_count", outcome="lost") == 1


CLOSED_PORTS = [
    pytest.param("redis://127.0.0.1:1/0?socket_connect_timeout=0.5", "redis", id="redis", marks=pytest.mark.redis),
    pytest.param(
        "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1", "postgres",
        id="postgres", marks=pytest.mark.postgres,
    ),
]


@pytest.mark.parametrize(("closed_url", "extra"), CLOSED_PORTS)
def test_prometheus_counts_backend_errors(closed_url: str, extra: str) -> None:
    need_module(f"txlock.backends.{extra}", extra)
    manager = txlock.from_url(closed_url)
    metrics = Prometheus(backend_label(manager))
    manager.add_observer(metrics.observer)
    try:
        with pytest.raises(txlock.BackendUnavailable):
            manager.acquire_lock("k", "a", acquire_timeout=5)
        with pytest.raises(txlock.BackendUnavailable):
            manager.is_locked("k")
    finally:
        manager.close()
    assert metrics.value("txlock_backend_errors_total", error="BackendUnavailable") == 2
    assert metrics.value("txlock_acquisitions_total", outcome="acquired") == 0


def test_prometheus_labels_keys_only_through_key_label() -> None:
    manager = txlock.from_url(f"memory://obs-{uuid.uuid4().hex}")
    plain = Prometheus("memory")
    keyed = Prometheus("memory", namespace="keyed", key_label=lambda key: key.split(":", 1)[0])
    manager.add_observer(plain.observer)
    manager.add_observer(keyed.observer)
    try:
        for key in ("tenant1:a", "tenant1:b", "tenant2:a"):
            assert manager.acquire_lock(key, "h")
    finally:
        manager.close()
    assert plain.value("txlock_acquisitions_total", outcome="acquired") == 3
    names = {label for metric in plain.registry.collect() for s in metric.samples for label in s.labels}
    assert "key" not in names
    assert keyed.value("keyed_acquisitions_total", key="tenant1", outcome="acquired") == 2
    assert keyed.value("keyed_acquisitions_total", key="tenant2", outcome="acquired") == 1


# ---------------------------------------------------------------- OpenTelemetry


class Telemetry:
    """SDK providers with in-memory exporters, and an :class:`OpenTelemetryObserver` on them."""

    def __init__(self, backend: str) -> None:
        need_module("opentelemetry.sdk", "test")
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from txlock.observers.otel import OpenTelemetryObserver

        self.backend = backend
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.observer = OpenTelemetryObserver(self.meter_provider, self.tracer_provider)

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def _points(self, name: str, attributes: dict[str, Any]) -> list[Any]:
        wanted = {"txlock.backend": self.backend, **attributes}
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [p for p in metric.data.data_points if dict(p.attributes) == wanted]
        return found

    def count(self, name: str, **attributes: Any) -> float:
        """The sum of counter ``name`` with exactly these attributes (and the backend)."""
        return float(sum(p.value for p in self._points(name, attributes)))

    def recorded(self, name: str, **attributes: Any) -> tuple[int, float]:
        """How many values histogram ``name`` recorded with these attributes, and their sum."""
        points = self._points(name, attributes)
        return sum(p.count for p in points), sum(p.sum for p in points)

    def spans(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def otel(manager: txlock.BaseLockManager) -> Iterator[Telemetry]:
    """An OpenTelemetry observer of the test's manager, on SDK providers of its own."""
    telemetry = Telemetry(backend_label(manager))
    try:
        with observed_by(manager, telemetry.observer):
            yield telemetry
    finally:
        telemetry.close()


def test_otel_spans_a_contended_wait_and_both_holds(
    api: Api, manager: txlock.BaseLockManager, otel: Telemetry, request: pytest.FixtureRequest
) -> None:
    contend(api, manager, "k")
    (wait,) = otel.spans("txlock wait")  # the first grant did not wait: no span
    assert wait.attributes["txlock.key"] == "k"
    assert wait.attributes["txlock.holder"] == "b"
    assert wait.attributes["txlock.outcome"] == "acquired"
    assert wait.start_time < wait.end_time
    holds = {s.attributes["txlock.holder"]: s for s in otel.spans("txlock hold")}
    assert set(holds) == {"a", "b"}
    assert all(s.attributes["txlock.outcome"] == "released" for s in holds.values())
    assert holds["a"].attributes["txlock.token"] < holds["b"].attributes["txlock.token"]
    assert wait.start_time < holds["a"].end_time  # b waited while a held
    assert otel.count("txlock.acquisitions", **{"txlock.outcome": "acquired"}) == 2
    assert otel.recorded("txlock.wait.duration", **{"txlock.outcome": "acquired", "txlock.contended": True})[0] == 1
    assert otel.recorded("txlock.wait.duration", **{"txlock.outcome": "acquired", "txlock.contended": False})[0] == 1
    assert otel.count("txlock.releases") == 2
    assert otel.recorded("txlock.hold.duration", **{"txlock.outcome": "released"})[0] == 2


def test_otel_spans_a_timeout(api: Api, otel: Telemetry) -> None:
    assert api.acquire_lock("k", "a")
    assert not api.acquire_lock("k", "b", acquire_timeout=0.05)
    (wait,) = otel.spans("txlock wait")
    assert wait.attributes["txlock.outcome"] == "timed_out"
    assert wait.end_time - wait.start_time >= 45_000_000
    assert otel.count("txlock.acquisitions", **{"txlock.outcome": "timed_out"}) == 1
    count, total = otel.recorded("txlock.wait.duration", **{"txlock.outcome": "timed_out", "txlock.contended": True})
    assert count == 1 and total >= 0.045


def test_otel_reports_renewals_and_a_lost_lock(manager: txlock.BaseLockManager, otel: Telemetry) -> None:
    with manager.lock("r", "a", ttl=0.6):
        eventually(lambda: otel.count("txlock.renewals", **{"txlock.outcome": "renewed"}) >= 1, what="a renewal")
    lose_a_lock_block(manager, "k")
    assert otel.count("txlock.lost_locks") == 1
    assert otel.count("txlock.force_releases") == 1
    assert otel.recorded("txlock.hold.duration", **{"txlock.outcome": "lost"})[0] == 1
    (lost,) = [s for s in otel.spans("txlock hold") if s.attributes["txlock.key"] == "k"
               and s.attributes["txlock.holder"] == "a"]
    from opentelemetry.trace import StatusCode

    assert lost.status.status_code is StatusCode.ERROR
    assert lost.attributes["txlock.outcome"] == "force_released"  # this process saw the force-release


def test_otel_ends_the_hold_span_of_a_lock_block(manager: txlock.BaseLockManager, otel: Telemetry) -> None:
    with manager.lock("k", "a", ttl=0.6):
        eventually(lambda: otel.count("txlock.renewals", **{"txlock.outcome": "renewed"}) >= 1, what="a renewal")
    (hold,) = otel.spans("txlock hold")
    assert hold.attributes["txlock.outcome"] == "released"
    assert any(e.name == "renewed" for e in hold.events)
    assert otel.count("txlock.releases") == 1


def test_otel_can_leave_keys_off_spans() -> None:
    manager = txlock.from_url(f"memory://obs-{uuid.uuid4().hex}")
    telemetry = Telemetry("memory")
    from txlock.observers.otel import OpenTelemetryObserver

    quiet = OpenTelemetryObserver(telemetry.meter_provider, telemetry.tracer_provider, keys_on_spans=False)
    try:
        with observed_by(manager, quiet):
            assert manager.acquire_lock("secret", "a")
            manager.release_lock("secret", "a")
    finally:
        manager.close()
        telemetry.close()
    (hold,) = telemetry.spans("txlock hold")
    assert "txlock.key" not in hold.attributes
    assert hold.attributes["txlock.holder"] == "a"


def test_otel_reaches_the_sdk_through_the_global_providers() -> None:
    need_module("opentelemetry.sdk", "test")
    code = (
        "from opentelemetry import metrics, trace\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "import txlock\n"
        "from txlock.observers.otel import OpenTelemetryObserver\n"
        "observer = OpenTelemetryObserver()  # before the SDK is set: the API's proxies forward\n"
        "exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()\n"
        "tracer_provider = TracerProvider()\n"
        "tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(tracer_provider)\n"
        "metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))\n"
        "m = txlock.from_url('memory://')\n"
        "m.add_observer(observer)\n"
        "m.acquire_lock('k', 'a'); m.release_lock('k', 'a')\n"
        "names = {x.name for r in reader.get_metrics_data().resource_metrics for s in r.scope_metrics "
        "for x in s.metrics}\n"
        "print(sorted(s.name for s in exporter.get_finished_spans()), sorted(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == (
        "['txlock hold'] ['txlock.acquisitions', 'txlock.hold.duration', 'txlock.releases', 'txlock.wait.duration']"
    )
