"""Prometheus metrics, read from the health state at scrape time.

Dynamo's own `dynamo_component_uptime_seconds` is kept so dashboards built on Dynamo keep
working; the sidecar's own metrics use the `dynamo_sidecar_` prefix. The probe request
counter's `path` label takes only the paths the probe port serves, plus `other`, so a
scanner cannot grow the number of series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.component import Kind, Reading
from sidecar.core.health import HealthState
from sidecar.core.records import Status


class HealthCollector(Collector):
    """Turns the current state into gauges and counters when Prometheus scrapes."""

    def __init__(self, state: HealthState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        seen = self.state.snapshot()
        uptime = GaugeMetricFamily(
            "dynamo_component_uptime_seconds", "Seconds since the sidecar started."
        )
        uptime.add_metric([], self.clock() - self.state.started_at)
        yield uptime

        ready = GaugeMetricFamily(
            "dynamo_sidecar_endpoint_ready",
            "1 when the worker serves the endpoint, 0 when it does not.",
            labels=["endpoint"],
        )
        changes = CounterMetricFamily(
            "dynamo_sidecar_endpoint_transitions",
            "Times the endpoint changed between ready and notready.",
            labels=["endpoint"],
        )
        for name, record in seen.endpoints.items():
            ready.add_metric([name], 1.0 if record.status is Status.READY else 0.0)
            changes.add_metric([name], record.transitions)
        yield ready
        yield changes

        yield _gauge(
            "dynamo_sidecar_ready",
            "1 when the worker is ready (what the health path says), 0 otherwise.",
            seen.status is Status.READY and not seen.draining,
        )
        yield _gauge(
            "dynamo_sidecar_live", "1 when the live path succeeds, 0 otherwise.", seen.live[0]
        )
        yield _gauge(
            "dynamo_sidecar_draining", "1 while the sidecar drains after SIGTERM.", seen.draining
        )
        instances = GaugeMetricFamily(
            "dynamo_sidecar_instances", "Instances registered by the worker."
        )
        instances.add_metric([], seen.instances)
        yield instances
        lives = CounterMetricFamily(
            "dynamo_sidecar_worker_lives",
            "The current worker life's number: lives begun, across sidecar restarts.",
        )
        lives.add_metric([], seen.life.number)
        yield lives


class _ReadAtScrape(Collector):
    def __init__(
        self,
        family: type[CounterMetricFamily] | type[GaugeMetricFamily],
        name: str,
        documentation: str,
        read: Callable[[], float | None],
    ) -> None:
        self.family, self.name, self.documentation, self.read = family, name, documentation, read

    def collect(self) -> Iterator[Metric]:
        value = self.read()
        if value is not None:
            metric = self.family(self.name, self.documentation)
            metric.add_metric([], value)
            yield metric


def _gauge(name: str, documentation: str, value: bool) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], 1.0 if value else 0.0)
    return family


class ProbeMetrics(Collector):
    """The registry the probe port serves, with its per-request counter.

    The counter is a plain dict bumped on the probe path (cheaper than a labelled
    `Counter`, and one event loop means no lock is needed), turned into a metric at scrape.
    """

    def __init__(
        self,
        state: HealthState,
        paths: Iterable[str],
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.paths = frozenset(paths)
        self.requests: dict[tuple[str, int], int] = {}
        self.registry.register(HealthCollector(state, clock))
        self.registry.register(self)

    def add(self, reading: Reading) -> None:
        """An adapter's metric, read at scrape time; a gauge read as None is left out."""
        family = CounterMetricFamily if reading.kind is Kind.COUNTER else GaugeMetricFamily
        self.registry.register(
            _ReadAtScrape(family, reading.name, reading.documentation, reading.read)
        )

    def count(self, path: str, code: int) -> None:
        key = (path if path in self.paths else "other", code)
        self.requests[key] = self.requests.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "dynamo_sidecar_probe_requests",
            "Requests to the probe port, by path and status code.",
            labels=["path", "code"],
        )
        for (path, code), count in sorted(self.requests.items()):
            family.add_metric([path, str(code)], count)
        yield family
