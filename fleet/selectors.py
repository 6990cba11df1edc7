"""Fleet reads for the API and pages: workers and their devices, a run's placement."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Case, F, Max, Q, Value, When, Window
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Rank
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
            .order_by("node_rank", "device__index")
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
            assigned = _assigned(held)
        found[run.pk] = {"assigned": assigned, "queue_position": positions.get(run.pk)}
    return found


def _assigned(held: list[tuple[str, int, str]]) -> dict[str, Any]:
    """Node 0's worker and devices; a gang's every node under "nodes", node 0 first."""
    by_worker: dict[str, list[tuple[int, str]]] = {}
    for worker, index, kind in held:
        by_worker.setdefault(worker, []).append((index, kind))
    nodes = [
        {
            "worker": worker,
            "devices": [i for i, k in rows if k == "gpu"],
            "slots": sum(k != "gpu" for _, k in rows),
        }
        for worker, rows in by_worker.items()
    ]
    return {**nodes[0], "nodes": nodes} if len(nodes) > 1 else nodes[0]


# Up to this many waiting runs, one COUNT each; beyond (a list page, the runs list's poll: up to
# 200), one ranking query (bench/bench_waiting_list.py: 200 COUNTs took 2.1 s with 2,000 queued
# runs on the loaded development VM, the ranking 26 ms; 6.5 s and 70 ms with 10,000).
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
    """What `_queue_position` counts, for many runs at once, in one query: the rank of each run
    among its pool's waiting runs by (priority descending, age); equal keys share a rank, as the
    count leaves ties out. Only the page's rows come back, whatever the queue's length."""
    pools = sorted({_pool_of(run) for run in runs})
    wanted = [run.pk for run in runs]
    ranked = (
        lifecycle.queued_runs()
        .filter(queue="", resources__pool__in=pools)
        .annotate(
            position=Window(
                Rank(),
                partition_by=[KeyTextTransform("pool", "resources")],
                order_by=[F("priority").desc(), F("created_at").asc()],
            ),
            # A filter on a window expression is applied outside the ranking (Django wraps the
            # query): a plain `pk__in` would narrow the rows before they are ranked.
            wanted=Window(
                Max(Case(When(pk__in=wanted, then=Value(1)), default=Value(0))), partition_by=[F("pk")]
            ),
        )
        .filter(wanted=1)
        .values_list("pk", "position")
    )
    return {pk: position - 1 for pk, position in ranked}
