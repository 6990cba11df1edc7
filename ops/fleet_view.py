"""The fleet as Prometheus sees it, from the web process's `/metrics`: devices total and in use by
pool, kind and worker state; runs waiting for admission and the longest wait by pool and priority
band.

The fleet app gives the reader (fleet.apps.FleetConfig.ready registers `fleet.metrics.read_fleet_view`),
so ops imports no app. Two queries per scrape whatever the size of the fleet or the queue, and
only counts and ages leave the database: no run, worker or user names. Every (pool, kind) pair seen
gets all three worker states and every pool all four priority bands, zeros included, so an alert
reads 0 rather than an absent series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import structlog
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ops import metrics

log = structlog.get_logger(__name__)
WORKER_STATES = ("active", "draining", "lost")


@dataclass(frozen=True)
class DeviceCount:
    pool: str
    kind: str  # gpu, slot
    worker_state: str  # active, draining, lost
    total: int
    in_use: int


@dataclass(frozen=True)
class QueueCount:
    pool: str
    priority_band: str  # one of ops.metrics.PRIORITY_BANDS
    runs: int
    oldest_due: datetime  # when the longest-waiting of them became due


@dataclass(frozen=True)
class FleetView:
    devices: list[DeviceCount]
    queued: list[QueueCount]


_readers: list[Callable[[], FleetView]] = []


def register_fleet_view(reader: Callable[[], FleetView]) -> None:
    if reader not in _readers:
        _readers.append(reader)


class FleetCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        for family in (
            metrics.FLEET_DEVICES,
            metrics.FLEET_DEVICES_IN_USE,
            metrics.FLEET_QUEUED_RUNS,
            metrics.FLEET_QUEUE_OLDEST_WAIT,
        ):
            yield family.build()

    def collect(self) -> Iterator[Metric]:
        if not _readers:
            return  # no fleet app in this process
        now = timezone.now()
        try:
            view = _readers[0]()
        except Exception as error:  # a scrape must answer whatever fails; /readyz names the cause
            kind = "metrics_fleet_unavailable" if isinstance(error, DatabaseError) else "metrics_fleet_failed"
            log.warning(kind, error=str(error)[:200])
            return
        yield from device_families(view.devices)
        pools = {count.pool for count in view.devices} | {count.pool for count in view.queued}
        yield from queue_families(view.queued, pools, now)


def device_families(devices: list[DeviceCount]) -> Iterator[Metric]:
    total, in_use = metrics.FLEET_DEVICES.build(), metrics.FLEET_DEVICES_IN_USE.build()
    found = {(c.pool, c.kind, c.worker_state): c for c in devices}
    for pool, kind in sorted({(c.pool, c.kind) for c in devices}):
        for state in WORKER_STATES:
            count = found.get((pool, kind, state))
            total.add_metric([pool, kind, state], count.total if count else 0)
            in_use.add_metric([pool, kind, state], count.in_use if count else 0)
    yield from (total, in_use)


def queue_families(queued: list[QueueCount], pools: set[str], now: datetime) -> Iterator[Metric]:
    runs, oldest = metrics.FLEET_QUEUED_RUNS.build(), metrics.FLEET_QUEUE_OLDEST_WAIT.build()
    found = {(c.pool, c.priority_band): c for c in queued}
    for pool in sorted(pools):
        for _, _, band in metrics.PRIORITY_BANDS:
            count = found.get((pool, band))
            waited = max(0.0, (now - count.oldest_due).total_seconds()) if count else 0.0
            runs.add_metric([pool, band], count.runs if count else 0)
            oldest.add_metric([pool, band], waited)
    yield from (runs, oldest)
