"""The product's own Prometheus metrics, declared in one place.

State that lives in the database (runs by status, breaker states) is read at scrape time by one
collector, with one query per family, never a query per series; labels have bounded
cardinality (no run ids).
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db import DatabaseError
from django.db.models import Count
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ops.breakers import breaker_states
from ops.models import BreakerState
from runs.models import Run, RunStatus

BREAKER_STATE_VALUES: dict[str, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}

RECONCILER_ACTIONS = Counter("controlplane_reconciler_actions_total", "What the reconciler did", ["action"])


class DatabaseStateCollector(Collector):
    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        runs = GaugeMetricFamily("controlplane_runs", "Runs by status", labels=["status"])
        breakers = GaugeMetricFamily(
            "controlplane_circuit_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open)",
            labels=["breaker"],
        )
        return runs, breakers

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registration calls this instead of collect(), so no query runs at import time.
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs, breakers = self._families()
        try:
            counts = dict(
                Run.objects.values_list("status").annotate(n=Count("pk")).values_list("status", "n")
            )
            states = breaker_states()
        except DatabaseError:
            return  # /metrics must answer while the database is down; /readyz reports that
        for status in RunStatus.values:
            runs.add_metric([status], counts.get(status, 0))
        for name, state, _ in states:
            breakers.add_metric([name], BREAKER_STATE_VALUES.get(state, 0))
        yield runs
        yield breakers


_registered = False


def register() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(DatabaseStateCollector())
        _registered = True
