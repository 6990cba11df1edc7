"""The web process's scrape-time metrics: read from the shared truth when `/metrics` is scraped.

A fixed number of round trips per scrape, whatever the number of runs: four database queries
(runs by status with open dead letters, oldest queued run per queue, finished-run counts,
breakers) plus the fleet's two (ops.fleet_view), one Redis SCAN+MGET for worker heartbeats,
and one pipelined LLEN per queue to the broker. Only counts and ages leave the database: no run
names, params, ids or users. A source that is down leaves its families out of the scrape
(`/readyz` says why) instead of failing it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import structlog
from celery import current_app
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ops import metrics
from ops.breakers import breaker_states
from ops.fleet_view import FleetCollector
from ops.models import BreakerState
from ops.outcomes import finished_counts
from ops.worker_heartbeat import live_workers

log = structlog.get_logger(__name__)

BREAKER_STATE_VALUES: dict[str, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}
# kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in their own lists.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@dataclass(frozen=True)
class RunCounts:
    """What the runs app reports at scrape time: counts and ages only, never names or ids."""

    by_status: dict[str, int]  # every status, zeros included
    dead_letters_open: int
    oldest_due: dict[str, datetime]  # queue -> when its oldest queued run became due


# Apps register into ops, ops imports no app: the runs app gives its counts and its queues
# (runs.apps.RunsConfig.ready), so this module stays below every app in the layer map.
_run_counts: list[Callable[[], RunCounts]] = []
_queue_sources: list[Callable[[], set[str]]] = []


def register_run_counts(reader: Callable[[], RunCounts]) -> None:
    if reader not in _run_counts:
        _run_counts.append(reader)


def register_queue_source(source: Callable[[], set[str]]) -> None:
    if source not in _queue_sources:
        _queue_sources.append(source)


def known_queues() -> set[str]:
    """The queues operators configured: the default, housekeeping, readiness', every source's."""
    queues = {str(settings.CELERY_TASK_DEFAULT_QUEUE), "housekeeping", *settings.READY_QUEUES}
    for source in _queue_sources:
        try:
            queues |= source()
        except Exception as error:  # a broken programs file is reported at launch, not here
            log.warning("metrics_queues_unreadable", error=str(error)[:200])
    return queues


def broker_queue_depths(queues: set[str]) -> dict[str, int]:
    """Messages waiting per queue. Raises when the broker cannot be read."""
    url = str(settings.CELERY_BROKER_URL)
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            ordered = sorted(queues)
            pipe = client.pipeline(transaction=False)
            for queue in ordered:
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(queue + suffix)
            lengths = pipe.execute()
        finally:
            client.close()
        width = len(_PRIORITY_SUFFIXES)
        return {queue: sum(lengths[i * width : (i + 1) * width]) for i, queue in enumerate(ordered)}
    depths = {}
    with current_app.connection_for_read() as connection:
        channel: Any = connection.default_channel  # a kombu virtual channel: it can count
        for queue in queues:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception:  # a queue nobody declared yet holds nothing
                depths[queue] = 0
    return depths


class WebStateCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        # Registration calls this instead of collect(), so nothing is read at registration.
        for family in (
            metrics.RUNS,
            metrics.DEAD_LETTERS,
            metrics.QUEUE_OLDEST_AGE,
            metrics.RUNS_FINISHED,
            metrics.CIRCUIT_BREAKER_STATE,
            metrics.WORKERS_LIVE,
            metrics.QUEUE_DEPTH,
        ):
            yield family.build()

    def collect(self) -> Iterator[Metric]:
        queues = known_queues()
        yield from self._database(queues)
        yield from self._workers(queues)
        yield from self._broker(queues)

    def _database(self, queues: set[str]) -> Iterator[Metric]:
        now = timezone.now()
        try:
            counts = [reader() for reader in _run_counts]
            finished = finished_counts()
            breakers = breaker_states()
        except Exception as error:  # a scrape must answer whatever fails; /readyz names the cause
            kind = (
                "metrics_database_unavailable"
                if isinstance(error, DatabaseError)
                else "metrics_database_failed"
            )
            log.warning(kind, error=str(error)[:200])
            return
        yield from self._run_families(counts, queues, now)
        done = metrics.RUNS_FINISHED.build()
        for program, outcome, failure_kind, count in finished:
            done.add_metric([program, outcome, failure_kind], count)
        states = metrics.CIRCUIT_BREAKER_STATE.build()
        for name, state, _ in breakers:
            states.add_metric([name], BREAKER_STATE_VALUES.get(state, 0))
        yield from (done, states)

    def _run_families(self, counts: list[RunCounts], queues: set[str], now: datetime) -> Iterator[Metric]:
        if not counts:
            return  # no runs app registered (a process that does not serve /metrics)
        runs, dead = metrics.RUNS.build(), metrics.DEAD_LETTERS.build()
        for status, n in sorted(counts[0].by_status.items()):
            runs.add_metric([status], n)
        dead.add_metric([], counts[0].dead_letters_open)
        ages = metrics.QUEUE_OLDEST_AGE.build()
        oldest = counts[0].oldest_due
        for queue in sorted(queues | set(oldest)):
            since = oldest.get(queue)
            ages.add_metric([queue], max(0.0, (now - since).total_seconds()) if since else 0.0)
        yield from (runs, dead, ages)

    def _workers(self, queues: set[str]) -> Iterator[Metric]:
        try:
            live = live_workers()
        except Exception as error:  # redis.RedisError mostly; a scrape must answer regardless
            log.warning("metrics_heartbeats_unavailable", error=str(error)[:200])
            return
        family = metrics.WORKERS_LIVE.build()
        for queue in sorted(queues | set(live)):
            family.add_metric([queue], live.get(queue, 0))
        yield family

    def _broker(self, queues: set[str]) -> Iterator[Metric]:
        try:
            depths = broker_queue_depths(queues)
        except Exception as error:  # every broker client raises its own kinds
            log.warning("metrics_broker_unavailable", error=str(error)[:200])
            return
        family = metrics.QUEUE_DEPTH.build()
        for queue in sorted(depths):
            family.add_metric([queue], depths[queue])
        yield family


_registered = False
_register_lock = threading.Lock()


def register_web_collectors() -> None:
    """Called by the `/metrics` middleware: the web process, and only it, exports these."""
    global _registered
    with _register_lock:
        if not _registered:
            REGISTRY.register(WebStateCollector())
            REGISTRY.register(FleetCollector())
            _registered = True
