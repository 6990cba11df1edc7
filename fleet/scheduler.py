"""The scheduler pass: admission of queued runs in Postgres, then dispatch to a worker's queue.

One pass is one transaction under an advisory lock: read the live workers and their free devices,
the queued runs waiting for admission (`queue = ''`), the GPUs each owner holds; plan (pure rules
in fleet/placement.py); insert the reservations and point each admitted run at its worker's own
queue; and only once that commits send the Celery messages. A message never names a device that
is not reserved, and a crash before the commit leaves nothing half done.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from fleet.agent import lost_before
from fleet.models import Reservation
from fleet.placement import Plan, plan
from fleet.quotas import gpu_limits
from fleet.snapshot import gpus_held, read_rooms, waiting_runs
from runs import lifecycle
from runs.models import Run, RunStatus
from runs.services import enqueue_run

log = structlog.get_logger(__name__)

# pg_advisory_xact_lock key ("fleet" in ASCII). Two passes at once would each read the same free
# devices; serialized, the second reads what the first reserved. (The OneToOne constraint on
# Reservation.device would still refuse a double booking; the lock makes it not happen at all.)
PASS_LOCK_KEY = 0x666C656574
# Statuses in which a run keeps its reservation: admitted and not yet claimed (queued), or held by
# an attempt. Any other status frees it (the lifecycle listener; the pass sweeps what is left).
HOLDING = (RunStatus.QUEUED, *lifecycle.LIVE_STATUSES)


@dataclass
class PassReport:
    placed: list[int] = field(default_factory=list)
    waiting: int = 0
    released: int = 0
    preempted: list[int] = field(default_factory=list)


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PASS_LOCK_KEY])
    # SQLite (standalone): every transaction is IMMEDIATE, so writers are serialized already.


def _release_stale(now: datetime) -> int:
    """Free reservations no run should hold: a run that ended (a listener that missed it), and
    an admitted run whose worker is lost before it claimed the run (its message went nowhere)."""
    released, _ = Reservation.objects.exclude(run__status__in=HOLDING).delete()
    stranded = Reservation.objects.filter(
        run__status=RunStatus.QUEUED, device__worker__heartbeat_at__lt=lost_before(now)
    ).values("run_id")
    # The run row is locked first, as a claim locks it: a claim racing this either commits first
    # (the run is running; skipped here) or finds no reservation and starts nothing.
    ids = list(
        Run.objects.select_for_update(of=("self",))
        .filter(pk__in=stranded, status=RunStatus.QUEUED)
        .values_list("pk", flat=True)
    )
    if ids:
        count, _ = Reservation.objects.filter(run_id__in=ids).delete()
        Run.objects.filter(pk__in=ids).update(queue="", enqueued_at=None)
        released += count
    return released


def requested(resources: Any) -> tuple[str, int]:
    """(pool, GPUs) a run's `resources` ask for; the queue query applies the same rule in SQL."""
    resources = resources if isinstance(resources, dict) else {}
    pool = resources.get("pool") or "default"
    gpus = resources.get("gpus") or 0
    return str(pool), int(gpus) if isinstance(gpus, int) else 0


def _admit(decided: Plan) -> list[tuple[int, str, str]]:
    """Reserve the planned devices and point each run at its worker's queue; returns the messages
    to send on commit. Only runs still queued and unadmitted (locked here) are admitted: a run
    cancelled since the snapshot waits for this commit, then its listener frees what we wrote."""
    wanted = {p.candidate.run_id for p in decided.placements}
    still = set(
        Run.objects.select_for_update()
        .filter(pk__in=wanted, status=RunStatus.QUEUED, queue="")
        .values_list("pk", flat=True)
    )
    placements = [p for p in decided.placements if p.candidate.run_id in still]
    Reservation.objects.bulk_create(
        [Reservation(device_id=d, run_id=p.candidate.run_id) for p in placements for d in p.device_ids]
    )
    by_queue: dict[str, list[int]] = defaultdict(list)
    for placement in placements:
        by_queue[placement.worker.queue].append(placement.candidate.run_id)
    for queue, ids in by_queue.items():
        Run.objects.filter(pk__in=ids).update(queue=queue, waiting_reason="", enqueued_at=None)
    return [(p.candidate.run_id, p.worker.queue, p.candidate.request_id) for p in placements]


def _store_reasons(decided: Plan, before: dict[int, str]) -> None:
    """Write waiting reasons that changed only: 10,000 waiting runs cost no writes per pass."""
    changed: dict[str, list[int]] = defaultdict(list)
    for run_id, reason in decided.reasons.items():
        if before.get(run_id, "") != reason[:200]:
            changed[reason[:200]].append(run_id)
    for reason, ids in changed.items():
        Run.objects.filter(pk__in=ids, status=RunStatus.QUEUED).update(waiting_reason=reason)


def schedule_pass(now: datetime | None = None) -> PassReport:
    """One admission pass; safe to run anywhere, any time, concurrently (serialized by a lock)."""
    from fleet.preemption import preempt_for

    now = now or timezone.now()
    report = PassReport()
    with transaction.atomic():
        _lock()
        report.released = _release_stale(now)
        rooms = read_rooms(now)
        # In admission order already (the database sorts by effective priority).
        candidates, reasons_before = waiting_runs(now, float(str(settings.FLEET["AGING_MINUTES"])))
        limits = gpu_limits({c.owner_id for c in candidates})
        decided = plan(candidates, rooms, gpus_held(), limits)
        messages = _admit(decided)
        _store_reasons(decided, reasons_before)
        report.preempted = preempt_for(list(decided.blocked.values()), now, rooms)
        report.placed = [run_id for run_id, _, _ in messages]
        report.waiting = len(candidates) - len(messages)

        def send() -> None:
            for run_id, queue, request_id in messages:
                enqueue_run(run_id, queue, request_id)

        transaction.on_commit(send)
    if report.placed or report.released or report.preempted:
        log.info(
            "fleet_pass",
            placed=len(report.placed),
            waiting=report.waiting,
            released=report.released,
            preempted=report.preempted,
        )
    return report


def schedule_pass_safely(reason: str) -> None:
    """A pass that must never fail its caller (a request, a supervisor): errors are logged."""
    try:
        schedule_pass()
    except Exception as error:  # the beat's pass retries; this caller must go on
        log.error("fleet_pass_failed", reason=reason, error=repr(error)[:300])


def schedule_pass_on_commit(reason: str) -> None:
    """A pass once the current transaction commits (nothing if it rolls back)."""
    transaction.on_commit(lambda: schedule_pass_safely(reason))
