"""Fleet reads for the API and pages: workers and their devices, a run's placement."""

from __future__ import annotations

from bisect import bisect_left
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.utils import timezone

from fleet.agent import QUEUE_PREFIX, lost_before
from fleet.models import Device, Reservation, Worker
from runs import lifecycle
from runs.models import Run, RunStatus


def worker_state(worker: Worker, now: datetime | None = None) -> str:
    """active, draining, or lost (no heartbeat for a lease): lost wins."""
    return "lost" if worker.heartbeat_at < lost_before(now) else worker.state


def describe_workers(workers: list[Worker]) -> list[dict[str, Any]]:
    now = timezone.now()
    devices = Device.objects.filter(worker__in=workers).select_related("reservation__run").order_by("index")
    by_worker: dict[int, list[dict[str, Any]]] = {}
    for device in devices:
        reservation = getattr(device, "reservation", None)
        by_worker.setdefault(device.worker_id, []).append(
            {
                "index": device.index,
                "kind": device.kind,
                "model": device.model or None,
                "memory_bytes": device.memory_bytes,
                "run": None
                if reservation is None
                else {
                    "id": reservation.run_id,
                    "name": reservation.run.name,
                    "status": reservation.run.status,
                },
            }
        )
    return [
        {
            "id": worker.pk,
            "name": worker.name,
            "pool": worker.pool,
            "host": worker.host,
            "queue": worker.queue,
            "state": worker_state(worker, now),
            "heartbeat_at": worker.heartbeat_at,
            "started_at": worker.started_at,
            "devices": by_worker.get(worker.pk, []),
        }
        for worker in workers
    ]


def _may_hold_devices(run: Run) -> bool:
    return run.status in lifecycle.LIVE_STATUSES or (
        run.status == RunStatus.QUEUED and run.queue.startswith(QUEUE_PREFIX)
    )


def placements_of(runs: list[Run]) -> dict[int, dict[str, Any]]:
    """Each run's worker and devices while it holds them, and its queue position while it waits
    for admission: one query for every run's devices (only runs that may hold any), one count per
    run waiting for admission."""
    holding = [run.pk for run in runs if _may_hold_devices(run)]
    devices: dict[int, list[tuple[str, int, str]]] = {}
    if holding:
        rows = (
            Reservation.objects.filter(run_id__in=holding)
            .order_by("device__index")
            .values_list("run_id", "device__worker__name", "device__index", "device__kind")
        )
        for run_id, worker, index, kind in rows:
            devices.setdefault(run_id, []).append((worker, index, kind))
    waiting = [run for run in runs if run.status == RunStatus.QUEUED and run.queue == ""]
    if len(waiting) > FEW_WAITING:
        positions = _queue_positions(waiting)
    else:
        positions = {run.pk: _queue_position(run) for run in waiting}
    found: dict[int, dict[str, Any]] = {}
    for run in runs:
        held = devices.get(run.pk)
        assigned = None
        if held:
            gpus = [index for _, index, kind in held if kind == "gpu"]
            assigned = {"worker": held[0][0], "devices": gpus, "slots": len(held) - len(gpus)}
        found[run.pk] = {"assigned": assigned, "queue_position": positions.get(run.pk)}
    return found


# Up to this many waiting runs, one COUNT each; beyond (a list page, the runs list's poll: up to
# 200), one read of every waiting run's (priority, age) in their pools: 200 COUNTs took ~1.5 s
# with 2,000 queued runs, the one read takes a few milliseconds.
FEW_WAITING = 3


def _pool_of(run: Run) -> str:
    return str((run.resources or {}).get("pool") or "default")


def _queue_position(run: Run) -> int:
    pool = _pool_of(run)
    # Priority then age, as the pass orders them (aging is not counted here: a close count).
    ahead = Q(priority__gt=run.priority) | Q(priority=run.priority, created_at__lt=run.created_at)
    waiting = lifecycle.queued_runs().filter(queue="", resources__pool=pool)
    return waiting.filter(ahead).exclude(pk=run.pk).count()


def _queue_positions(runs: list[Run]) -> dict[int, int]:
    """What `_queue_position` counts, for many runs at once: each pool's waiting runs sorted by
    (priority descending, age), and each run's place found by bisection (ties as the count)."""
    pools = sorted({_pool_of(run) for run in runs})
    rows = (
        lifecycle.queued_runs()
        .filter(queue="", resources__pool__in=pools)
        .values_list("resources__pool", "priority", "created_at")
    )
    keys: dict[str, list[tuple[int, datetime]]] = {}
    for pool, priority, created_at in rows:
        keys.setdefault(str(pool), []).append((-priority, created_at))
    for ordered in keys.values():
        ordered.sort()
    return {run.pk: bisect_left(keys.get(_pool_of(run), []), (-run.priority, run.created_at)) for run in runs}
