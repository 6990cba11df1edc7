"""The scheduler pass: admission of queued runs in Postgres, then dispatch to a worker's queue.

One pass is one transaction under an advisory lock: read the live workers and their free devices,
the queued runs waiting for admission (`queue = ''`) in chunks until every pool is served (the
unread tail's reasons: fleet/tail.py), the GPUs each owner holds; plan (pure rules
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
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from fleet.agent import lost_before
from fleet.models import Reservation
from fleet.placement import Plan, Planner, WorkerRoom
from fleet.quotas import gpu_limits
from fleet.snapshot import gpus_held, queue_chunks, queue_owners, read_rooms
from fleet.tail import store_tail_reasons
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
# Queued runs read per fetch. On a full fleet every pool's head is in the first few hundred runs,
# so one chunk usually serves the pass and the rest of a 10,000-run queue stays in the database.
QUEUE_CHUNK = 500


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


def requested_nodes(resources: Any) -> int:
    """How many workers a run's gang spans (1: not a gang); fleet.snapshot reads it in SQL."""
    nodes = resources.get("nodes") if isinstance(resources, dict) else None
    return max(1, nodes) if isinstance(nodes, int) and not isinstance(nodes, bool) else 1


def _admit(decided: Plan) -> list[tuple[int, str, str]]:
    """Reserve the planned devices and point each run at its (node 0's) worker's queue; returns
    the messages to send on commit, one per node. Only runs still queued and unadmitted (locked
    here) are admitted: a run cancelled since the snapshot waits for this commit, then its
    listener frees what we wrote."""
    wanted = {p.candidate.run_id for p in decided.placements}
    still = set(
        Run.objects.select_for_update()
        .filter(pk__in=wanted, status=RunStatus.QUEUED, queue="")
        .values_list("pk", flat=True)
    )
    placements = [p for p in decided.placements if p.candidate.run_id in still]
    Reservation.objects.bulk_create(
        [
            Reservation(device_id=device, run_id=p.candidate.run_id, node_rank=rank)
            for p in placements
            for rank, (_, devices) in enumerate(p.nodes())
            for device in devices
        ]
    )
    by_queue: dict[str, list[int]] = defaultdict(list)
    for placement in placements:
        by_queue[placement.worker.queue].append(placement.candidate.run_id)
    for queue, ids in by_queue.items():
        Run.objects.filter(pk__in=ids).update(queue=queue, waiting_reason="", enqueued_at=None)
    return [
        (p.candidate.run_id, worker.queue, p.candidate.request_id)
        for p in placements
        for worker, _ in p.nodes()
    ]


def _store_reasons(decided: Plan, before: dict[int, str]) -> None:
    """Write waiting reasons that changed only: 10,000 waiting runs cost no writes per pass."""
    changed: dict[str, list[int]] = defaultdict(list)
    for run_id, reason in decided.reasons.items():
        if before.get(run_id, "") != reason[:200]:
            changed[reason[:200]].append(run_id)
    for reason, ids in changed.items():
        Run.objects.filter(pk__in=ids, status=RunStatus.QUEUED).update(waiting_reason=reason)


def _owners(ids: set[int]) -> tuple[dict[int, str], dict[int, int]]:
    """Owners' names (for the quota reasons) and GPU limits: two small queries."""
    return dict(User.objects.filter(pk__in=ids).values_list("pk", "username")), gpu_limits(ids)


def _plan_queue(now: datetime, rooms: list[WorkerRoom], report: PassReport) -> tuple[Plan, dict[int, str]]:
    """Read the queue in admission order, a chunk at a time, and plan it; stop reading once every
    pool is served (fleet.placement.Planner.served) and give the unread tail its reasons in one
    UPDATE (fleet.tail). Returns the plan and the stored reasons of the runs read."""
    owners = queue_owners(now)
    names, limits = _owners(set(owners))
    planner = Planner(rooms, gpus_held(), limits)
    reasons_before: dict[int, str] = {}
    early_stop = connection.vendor == "postgresql"  # fleet.tail's UPDATE is Postgres SQL
    aging = float(str(settings.FLEET["AGING_MINUTES"]))
    total = sum(owners.values())
    # A queue of two chunks or less is cheaper read whole (one query) than cut (a chunk query,
    # then the tail's UPDATE): 1,000 queued took 24 ms read whole, 31 ms cut (bench_scheduler).
    size = QUEUE_CHUNK if total > 2 * QUEUE_CHUNK else max(total, 1)
    stopped = False
    for chunk, before in queue_chunks(now, aging, names, size):
        if late := {run.owner_id for run in chunk} - limits.keys():  # launched since queue_owners
            more_names, more_limits = _owners(late)
            names.update(more_names)
            limits.update(more_limits)
            chunk = [run._replace(owner_name=names.get(run.owner_id, "")) for run in chunk]
        planner.add(chunk)
        reasons_before.update(before)
        if early_stop and len(reasons_before) < total and planner.served():
            stopped = True
            break
    if stopped:
        held = planner.held
        tail_owners = {pk: (names.get(pk, ""), held.get(pk, 0), limits.get(pk, 0)) for pk in owners}
        store_tail_reasons(now, list(reasons_before), planner.pools, tail_owners)
    report.waiting = (total if stopped else len(reasons_before)) - len(planner.result.placements)
    return planner.result, reasons_before


def schedule_pass(now: datetime | None = None) -> PassReport:
    """One admission pass; safe to run anywhere, any time, concurrently (serialized by a lock)."""
    from fleet.preemption import preempt_for

    now = now or timezone.now()
    report = PassReport()
    with transaction.atomic():
        _lock()
        report.released = _release_stale(now)
        rooms = read_rooms(now)
        decided, reasons_before = _plan_queue(now, rooms, report)
        messages = _admit(decided)
        _store_reasons(decided, reasons_before)
        report.preempted = preempt_for(list(decided.blocked.values()), now, rooms)
        report.placed = list(dict.fromkeys(run_id for run_id, _, _ in messages))

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
