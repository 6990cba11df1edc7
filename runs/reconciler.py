"""The reconciler: makes the database and the fleet agree again after faults.

Postgres, not the broker, keeps runs alive. Every few seconds (Celery beat in production, a
thread in standalone) it:
1. concludes live attempts whose lease expired (their worker died or was cut off): the run is
   queued again to resume from its newest checkpoint, or dead-lettered once `max_attempts` is
   spent; an external run (tracking mode) that reported nothing within its timeout fails;
2. fails queued runs older than their queue time-to-live;
3. dispatches queued runs that are due and have no message in the broker (never enqueued because
   the broker was down at commit, a retry whose backoff has passed, or a message Redis lost).
Each step is a set of conditional updates, so two reconcilers running at once do no harm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from ops.metrics import LEASE_EXPIRIES, RECONCILER_ACTIONS
from runs import lifecycle
from runs.attempts import expire_lease
from runs.broker import pending_run_ids
from runs.lifecycle import Trigger
from runs.models import ErrorKind, RunKind, RunStatus
from runs.services import enqueue_run
from runs.tracking import expire_silent_runs

log = structlog.get_logger(__name__)
BATCH = 200


@dataclass
class Report:
    leases_expired: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    expired_in_queue: list[int] = field(default_factory=list)
    dispatched: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.__dict__.items()}


def reconcile(now: datetime | None = None) -> Report:
    now = now or timezone.now()
    report = Report()
    _expire_leases(now, report)
    _expire_queue_ttl(now, report)
    _dispatch(now, report)
    counts = report.as_dict()
    LEASE_EXPIRIES.inc(counts["leases_expired"])
    for action, count in counts.items():
        if count:
            RECONCILER_ACTIONS.labels(action=action).inc(count)
    if any(counts.values()):
        log.info("reconciled", **counts)
    return report


def _expire_leases(now: datetime, report: Report) -> None:
    # External runs (tracking mode) have no worker to lose: silence fails them, never requeues.
    report.leases_expired.extend(expire_silent_runs(now, BATCH))
    live = lifecycle.live_runs().exclude(kind=RunKind.EXTERNAL)
    expired = live.filter(lease_expires_at__lt=now).values_list("pk", flat=True)[:BATCH]
    for run_id in expired:
        status = expire_lease(run_id, now)
        if status is None:
            continue
        report.leases_expired.append(run_id)
        if status == RunStatus.QUEUED:
            report.requeued.append(run_id)
        elif status == RunStatus.DEAD:
            report.dead.append(run_id)


def _expire_queue_ttl(now: datetime, report: Report) -> None:
    candidates = lifecycle.queued_runs().filter(queue_ttl_seconds__isnull=False)
    for run_id, created_at, ttl in candidates.values_list("pk", "created_at", "queue_ttl_seconds")[:BATCH]:
        if ttl is None or created_at + timedelta(seconds=ttl) > now:
            continue
        # Conditional on `queued`: a run claimed since it was listed keeps running.
        if lifecycle.perform(
            run_id,
            Trigger.QUEUE_TTL_EXPIRED,
            changes={
                "finished_at": now,
                "error_kind": ErrorKind.TIMEOUT,
                "error_code": "queue_ttl",
                "error_message": f"waited in the queue longer than its time-to-live of {ttl} s",
            },
        ):
            report.expired_in_queue.append(run_id)


def _dispatch(now: datetime, report: Report) -> None:
    # queue = "": waiting for the fleet's admission (fleet.scheduler), which sends it when placed.
    due = lifecycle.queued_runs().filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
    due = due.exclude(queue="")
    # A grace period lets the on-commit enqueue of a fresh launch or retry happen first.
    settled = now - timedelta(seconds=5)
    never_sent = list(
        due.filter(enqueued_at__isnull=True, updated_at__lt=settled).values_list("pk", "queue")[:BATCH]
    )
    stale_before = now - timedelta(seconds=float(settings.CONTROLPLANE["REDISPATCH_AFTER_SECONDS"]))
    waiting = list(due.filter(enqueued_at__lt=stale_before).values_list("pk", "queue")[:BATCH])
    if waiting:
        pending = pending_run_ids({queue for _, queue in waiting})
        # When the broker cannot be inspected, a message that was sent is trusted to exist.
        waiting = [] if pending is None else [(pk, queue) for pk, queue in waiting if pk not in pending]
    for run_id, queue in never_sent + waiting:
        lifecycle.queued_runs().filter(pk=run_id).update(enqueued_at=None)
        enqueue_run(run_id, queue, "")
        report.dispatched.append(run_id)


def recover_in_process_broker(now: datetime | None = None) -> None:
    """At standalone start: the in-memory broker is empty and no other worker can exist, so runs
    left running by a previous process are lost now, and queued runs need their message again."""
    now = now or timezone.now()
    lifecycle.live_runs().update(lease_expires_at=now - timedelta(seconds=1))
    lifecycle.queued_runs().update(enqueued_at=None, updated_at=now - timedelta(minutes=1))
