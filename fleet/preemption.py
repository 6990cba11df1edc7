"""Preemption: when the head of a pool cannot be placed, ask the fewest lower-priority
preemptible runs on ONE worker of the pool to stop (SIGTERM, final checkpoint) so it fits.

The victims move `running → preempted` (a fenced lifecycle row); their supervisors stop the
program, and `exit.preempted` queues them again at their old place (created_at is kept). Their
devices are freed only then, so the head is placed by the pass that follows.
"""

from __future__ import annotations

from datetime import datetime
from itertools import combinations

import structlog
from django.conf import settings
from django.db.models import Count

from fleet.agent import lost_before
from fleet.models import Reservation, WorkerState
from fleet.placement import Candidate, WorkerRoom
from runs import lifecycle
from runs.lifecycle import Trigger
from runs.models import RunStatus

log = structlog.get_logger(__name__)


# (worker id, priority, devices held, run id, attempt) of a running run a head might preempt.
Victim = tuple[int, int, int, int, int]


def _victims(heads: list[Candidate], now: datetime) -> dict[tuple[str, str], list[Victim]]:
    """(pool, kind) -> the running, preemptible runs on live active workers there, below the
    highest head's priority: one query for every head of the pass."""
    rows = (
        Reservation.objects.filter(
            device__worker__pool__in={head.pool for head in heads},
            device__worker__state=WorkerState.ACTIVE,
            device__worker__heartbeat_at__gte=lost_before(now),
            device__kind__in={head.kind for head in heads},
            run__status=RunStatus.RUNNING,
            run__preemptible=True,
            run__priority__lt=max(head.priority for head in heads),
            run__preempt_count__lt=int(settings.FLEET["MAX_PREEMPTIONS"] or 0),
        )
        .values_list(
            "device__worker__pool",
            "device__kind",
            "device__worker_id",
            "run_id",
            "run__priority",
            "run__attempt",
        )
        .annotate(held=Count("id"))
    )
    found: dict[tuple[str, str], list[Victim]] = {}
    for pool, kind, worker_id, run_id, priority, attempt, held in rows:
        found.setdefault((pool, kind), []).append((worker_id, priority, held, run_id, attempt))
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


def choose(
    head: Candidate,
    now: datetime,
    victims: list[Victim] | None = None,
    rooms: list[WorkerRoom] | None = None,
) -> list[tuple[int, int]]:
    """The fewest victims on one worker that make room for `head`: [(run id, attempt)].
    `victims` and `rooms` come from the pass (read once for all heads); without them, read here."""
    if victims is None:
        victims = _victims([head], now).get((head.pool, head.kind), [])
    free = {room.id: len(room.free.get(head.kind, [])) for room in rooms} if rooms is not None else None
    on_worker: dict[int, list[tuple[int, int, int, int]]] = {}
    for worker_id, priority, held, run_id, attempt in victims:
        if priority < head.priority:
            on_worker.setdefault(worker_id, []).append((priority, held, run_id, attempt))
    best: list[tuple[int, int]] | None = None
    for worker_id, runs in sorted(on_worker.items()):
        room = free.get(worker_id, 0) if free is not None else _free_on(worker_id, head.kind)
        missing = head.demand - room
        chosen = [] if missing <= 0 else _fewest(runs[:16], missing)
        if chosen is not None and (best is None or len(chosen) < len(best)):
            best = chosen
    return best or []


def preempt_for(heads: list[Candidate], now: datetime, rooms: list[WorkerRoom] | None = None) -> list[int]:
    """Preempt for each blocked head unless runs are already stopping in its pool. `rooms`: the
    pass's workers with the free devices its plan left."""
    if not heads:
        return []
    stopping = set(
        Reservation.objects.filter(
            run__status=RunStatus.PREEMPTED, device__worker__pool__in={head.pool for head in heads}
        ).values_list("device__worker__pool", flat=True)
    )
    # Room is on its way where runs are stopping. A gang head preempts nothing: room on one worker
    # would not place it, and stopping runs on several at once for a head that may still not fit
    # is a trade this rule does not make (docs/distributed.md); its hold-back keeps its workers.
    waiting = [head for head in heads if head.pool not in stopping and head.nodes == 1]
    victims = _victims(waiting, now) if waiting else {}
    preempted: list[int] = []
    for head in waiting:
        candidates = victims.get((head.pool, head.kind), [])
        if not candidates:
            continue
        for run_id, attempt in choose(head, now, candidates, rooms):
            if lifecycle.perform(run_id, Trigger.PREEMPT_REQUEST, attempt=attempt):
                preempted.append(run_id)
                log.info("run_preempted", run_id=run_id, for_run=head.run_id)
    return preempted


def preempt_worker(worker_id: int) -> list[int]:
    """A drain with `preempt`: stop the worker's preemptible running runs (they resume elsewhere)."""
    rows = (
        Reservation.objects.filter(
            device__worker_id=worker_id, run__status=RunStatus.RUNNING, run__preemptible=True
        )
        .values_list("run_id", "run__attempt")
        .distinct()
    )
    return [
        run_id
        for run_id, attempt in rows
        if lifecycle.perform(run_id, Trigger.PREEMPT_REQUEST, attempt=attempt)
    ]
