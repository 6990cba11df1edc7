"""The web process's scrape-time metrics: read from the shared truth when `/metrics` is scraped.

A fixed number of round trips per scrape, whatever the number of runs: four database queries
(runs by status with open dead letters, oldest queued run per queue, finished-run counts,
breakers), one Redis SCAN+MGET for worker heartbeats, and one pipelined LLEN per queue to the
broker. Only counts and ages leave the database: no run names, params, ids or users. A source
that is down leaves its families out of the scrape (`/readyz` says why) instead of failing it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import redis
import structlog
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, DateTimeField, Min, Q
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ops import metrics
from ops.breakers import breaker_states
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


def known_queues() -> set[str]:
    """The queues operators configured: the default, housekeeping, every program's, readiness'."""
    from runs.programs import all_programs

    queues = {str(settings.CELERY_TASK_DEFAULT_QUEUE), "housekeeping", *settings.READY_QUEUES}
    try:
        queues |= {program.queue for program in all_programs().values() if program.queue}
    except Exception as error:  # a broken programs file is reported at launch, not here
        log.warning("metrics_programs_unreadable", error=str(error)[:200])
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
    from controlplane.celery import app

    depths = {}
    with app.connection_for_read() as connection:
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
        from runs.models import Run, RunStatus

        now = timezone.now()
        try:
            by_status = {
                row["status"]: row
                for row in Run.objects.values("status").annotate(
                    n=Count("pk"), open=Count("pk", filter=Q(discarded_at__isnull=True))
                )
            }
            # A queued run is due from when it was queued (updated_at) or its backoff ends.
            due = Greatest("updated_at", Coalesce("not_before", "updated_at"), output_field=DateTimeField())
            oldest = dict(
                Run.objects.filter(status=RunStatus.QUEUED)
                .values("queue")
                .annotate(since=Min(due))
                .values_list("queue", "since")
            )
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
        runs, dead = metrics.RUNS.build(), metrics.DEAD_LETTERS.build()
        for status in RunStatus.values:
            runs.add_metric([status], by_status.get(status, {}).get("n", 0))
        dead.add_metric([], by_status.get(RunStatus.DEAD, {}).get("open", 0))
        ages = metrics.QUEUE_OLDEST_AGE.build()
        for queue in sorted(queues | set(oldest)):
            since = oldest.get(queue)
            ages.add_metric([queue], max(0.0, (now - since).total_seconds()) if since else 0.0)
        done = metrics.RUNS_FINISHED.build()
        for program, outcome, failure_kind, count in finished:
            done.add_metric([program, outcome, failure_kind], count)
        states = metrics.CIRCUIT_BREAKER_STATE.build()
        for name, state, _ in breakers:
            states.add_metric([name], BREAKER_STATE_VALUES.get(state, 0))
        yield from (runs, dead, ages, done, states)

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
            _registered = True
