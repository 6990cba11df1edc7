# mypy: disable-error-code="arg-type,assignment"
# (a copy of old code: its Candidate is its own dataclass, passed where the new NamedTuple is typed)
"""The scheduler pass as it was before it was made fast (commit d250c46), for bench_scheduler.py's
baseline: measured in the same run as the current pass, on the same rows, so the ratio holds on a
machine whose load changes from minute to minute. Not used by the product.

What changed since (docs/benchmarks.md, "One scheduler pass"): the queue is ordered by the database
and read without JSON or timestamps to convert, the workers' devices are read in one query,
placement groups workers by pool, and preemption reads its victims once for every head.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import combinations

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from fleet.agent import lost_before
from fleet.models import Device, DeviceKind, Reservation, Worker, WorkerState
from fleet.placement import Placement, Plan, WorkerRoom, effective_priority, pool_stats, unfit_reason
from fleet.quotas import gpu_limits
from fleet.scheduler import PassReport, _admit, _lock, _release_stale, _store_reasons, requested
from fleet.snapshot import gpus_held
from runs import lifecycle
from runs.lifecycle import Trigger
from runs.models import RunStatus


@dataclass(frozen=True)
class Candidate:
    run_id: int
    owner_id: int
    owner_name: str
    pool: str
    gpus: int
    priority: int
    created_at: datetime
    request_id: str = ""
    nodes: int = 1  # the old pass had no gangs; the shared unfit_reason reads it

    @property
    def kind(self) -> str:
        return DeviceKind.GPU if self.gpus > 0 else DeviceKind.SLOT

    @property
    def demand(self) -> int:
        return self.gpus if self.gpus > 0 else 1


def read_rooms(now: datetime) -> list[WorkerRoom]:
    """Live workers (active or draining) with their devices; free ones listed by index."""
    live = Worker.objects.filter(heartbeat_at__gte=lost_before(now))
    rooms = {w.id: WorkerRoom(w.id, w.name, w.pool, w.queue, w.state == WorkerState.ACTIVE) for w in live}
    devices = (
        Device.objects.filter(worker_id__in=list(rooms))
        .annotate(taken=Exists(Reservation.objects.filter(device_id=OuterRef("pk"))))
        .order_by("worker_id", "index")
        .values_list("id", "worker_id", "index", "kind", "taken")
    )
    for device_id, worker_id, index, kind, taken in devices:
        room = rooms[worker_id]
        room.total[kind] = room.total.get(kind, 0) + 1
        free = room.free.setdefault(kind, [])
        if not taken:
            free.append((device_id, index))
    return list(rooms.values())


def waiting_runs(now: datetime) -> tuple[list[Candidate], dict[int, str]]:
    """Queued runs waiting for admission, due now; and their current waiting reasons."""
    rows = (
        lifecycle.queued_runs()
        .filter(queue="")
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .values_list(
            "pk",
            "owner_id",
            "owner__username",
            "resources",
            "priority",
            "created_at",
            "request_id",
            "waiting_reason",
        )
    )
    candidates, reasons = [], {}
    for pk, owner_id, username, resources, priority, created_at, request_id, reason in rows.iterator(2000):
        pool, gpus = requested(resources)
        candidates.append(Candidate(pk, owner_id, username, pool, gpus, priority, created_at, request_id))
        reasons[pk] = reason
    return candidates, reasons


def order(candidates: list[Candidate], now: datetime, aging_minutes: float) -> list[Candidate]:
    def key(run: Candidate) -> tuple[int, datetime, int]:
        return (
            -effective_priority(run.priority, run.created_at, now, aging_minutes),
            run.created_at,
            run.run_id,
        )

    return sorted(candidates, key=key)


def best_fit(run: Candidate, workers: list[WorkerRoom]) -> WorkerRoom | None:
    fitting = [
        w for w in workers if w.active and w.pool == run.pool and len(w.free.get(run.kind, [])) >= run.demand
    ]
    if not fitting:
        return None
    return min(fitting, key=lambda w: (len(w.free[run.kind]) - run.demand, w.id))


def plan(
    ordered: list[Candidate],
    workers: list[WorkerRoom],
    gpus_held: dict[int, int],
    gpu_limits: dict[int, int],
) -> Plan:
    """Place `ordered` (already in admission order) onto `workers`; mutates their free lists."""
    result = Plan()
    held = dict(gpus_held)
    pools = pool_stats(workers)
    for run in ordered:
        reason = unfit_reason(run, pools)
        if reason is not None:
            result.reasons[run.run_id] = reason
            continue
        limit = gpu_limits.get(run.owner_id, 0)
        used = held.get(run.owner_id, 0)
        if run.gpus and used + run.gpus > limit:
            result.reasons[run.run_id] = f"quota: {run.owner_name} uses {used} of {limit} GPUs"
            continue
        result.reasons[run.run_id] = ""
        if (run.pool, run.kind) in result.blocked:
            continue  # held back behind the head of its pool
        worker = best_fit(run, workers)
        if worker is None:
            result.blocked[(run.pool, run.kind)] = run
            continue
        taken, worker.free[run.kind] = (
            worker.free[run.kind][: run.demand],
            worker.free[run.kind][run.demand :],
        )
        held[run.owner_id] = used + run.gpus
        result.placements.append(Placement(run, worker, tuple(device_id for device_id, _ in taken)))
    return result


def _victims_on_workers(head: Candidate, now: datetime) -> dict[int, list[tuple[int, int, int, int]]]:
    """worker id -> [(priority, devices held, run id, attempt)] of runs the head may preempt."""
    rows = (
        Reservation.objects.filter(
            device__worker__pool=head.pool,
            device__worker__state=WorkerState.ACTIVE,
            device__worker__heartbeat_at__gte=lost_before(now),
            device__kind=head.kind,
            run__status=RunStatus.RUNNING,
            run__preemptible=True,
            run__priority__lt=head.priority,
            run__preempt_count__lt=int(settings.FLEET["MAX_PREEMPTIONS"] or 0),
        )
        .values("device__worker_id", "run_id", "run__priority", "run__attempt")
        .annotate(held=Count("id"))
    )
    found: dict[int, list[tuple[int, int, int, int]]] = {}
    for row in rows:
        found.setdefault(row["device__worker_id"], []).append(
            (row["run__priority"], row["held"], row["run_id"], row["run__attempt"])
        )
    return found


def _free_on(worker_id: int, kind: str) -> int:
    from fleet.models import Device

    return Device.objects.filter(worker_id=worker_id, kind=kind, reservation__isnull=True).count()


def _fewest(runs: list[tuple[int, int, int, int]], missing: int) -> list[tuple[int, int]] | None:
    """The smallest set of runs holding at least `missing` devices; among sets of that size, the
    one whose highest priority is lowest (then the lowest total). A worker holds a few runs (at
    most one per device), so trying every combination is cheap."""
    for size in range(1, len(runs) + 1):
        fitting = [combo for combo in combinations(runs, size) if sum(r[1] for r in combo) >= missing]
        if fitting:
            best = min(fitting, key=lambda combo: (max(r[0] for r in combo), sum(r[0] for r in combo)))
            return [(run_id, attempt) for _, _, run_id, attempt in best]
    return None


def choose(head: Candidate, now: datetime) -> list[tuple[int, int]]:
    """The fewest victims on one worker that make room for `head`: [(run id, attempt)]."""
    best: list[tuple[int, int]] | None = None
    for worker_id, runs in sorted(_victims_on_workers(head, now).items()):
        missing = head.demand - _free_on(worker_id, head.kind)
        chosen = [] if missing <= 0 else _fewest(runs[:16], missing)
        if chosen is not None and (best is None or len(chosen) < len(best)):
            best = chosen
    return best or []


def preempt_for(heads: list[Candidate], now: datetime) -> list[int]:
    """Preempt for each blocked head unless runs are already stopping in its pool."""
    preempted: list[int] = []
    for head in heads:
        stopping = Reservation.objects.filter(run__status=RunStatus.PREEMPTED, device__worker__pool=head.pool)
        if stopping.exists():
            continue  # room is on its way: the next pass places the head
        for run_id, attempt in choose(head, now):
            if lifecycle.perform(run_id, Trigger.PREEMPT_REQUEST, attempt=attempt):
                preempted.append(run_id)
    return preempted


SENT: list[tuple[int, str, str]] = []  # what the pass would send (the bench counts, not sends)


def schedule_pass(now: datetime | None = None) -> PassReport:
    """The old pass: the same transaction, lock, writes and decisions as fleet.scheduler's."""
    now = now or timezone.now()
    report = PassReport()
    with transaction.atomic():
        _lock()
        report.released = _release_stale(now)
        rooms = read_rooms(now)
        candidates, reasons_before = waiting_runs(now)
        ordered = order(candidates, now, float(str(settings.FLEET["AGING_MINUTES"])))
        limits = gpu_limits({c.owner_id for c in candidates})
        decided = plan(ordered, rooms, gpus_held(), limits)
        messages = _admit(decided)
        _store_reasons(decided, reasons_before)
        report.preempted = preempt_for(list(decided.blocked.values()), now)
        report.placed = [run_id for run_id, _, _ in messages]
        report.waiting = len(candidates) - len(messages)

        transaction.on_commit(lambda: SENT.extend(messages))
    return report
