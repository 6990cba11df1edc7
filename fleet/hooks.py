"""What the fleet registers into runs (fleet.apps): the transition listener and the launch check."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count

from fleet.models import Device, DeviceKind, Worker
from fleet.quotas import limit_of
from fleet.scheduler import schedule_pass_on_commit
from runs.lifecycle import LIVE_STATUSES, TransitionEvent, Trigger
from runs.models import Run, RunStatus


def after_transition(event: TransitionEvent) -> None:
    """In the transaction of a status change: free the run's devices when it no longer needs
    them, and run a pass once committed (a launch, an end, a requeue all change who fits where)."""
    from fleet.models import Reservation

    if event.target in LIVE_STATUSES:
        return  # a claim keeps its reservation; cancelling and preempted runs still hold devices
    if event.trigger != Trigger.LAUNCH:
        Reservation.objects.filter(run_id=event.run_id).delete()
    if event.target == RunStatus.QUEUED and event.trigger != Trigger.LAUNCH:
        # Back to waiting for admission: its old worker's queue is no longer its queue.
        Run.objects.filter(pk=event.run_id).update(queue="", waiting_reason="")
    schedule_pass_on_commit(str(event.trigger))


def _largest_gpu_counts(pool: str | None = None) -> dict[str, int]:
    """pool -> the most GPUs one worker of it has (the most one run may ask for there)."""
    devices = Device.objects.filter(kind=DeviceKind.GPU)
    if pool is not None:
        devices = devices.filter(worker__pool=pool)
    rows = devices.values("worker_id", "worker__pool").annotate(count=Count("id"))
    largest: dict[str, int] = {}
    for row in rows:
        largest[row["worker__pool"]] = max(largest.get(row["worker__pool"], 0), row["count"])
    return largest


def pool_capacities() -> list[tuple[str, int, int]]:
    """[(pool, largest GPU count of one worker, workers)] for every pool a worker has joined."""
    largest = _largest_gpu_counts()
    rows = Worker.objects.values("pool").annotate(count=Count("id")).values_list("pool", "count")
    return sorted((pool, largest.get(pool, 0), count) for pool, count in rows)


def validate_launch(owner: User | None, resources: dict[str, Any]) -> dict[str, str]:
    """Pool and GPU count against the fleet as registered (any worker seen, live or not)."""
    pool = str(resources.get("pool") or "default")
    gpus = int(resources.get("gpus") or 0)
    nodes = int(resources.get("nodes") or 1)
    workers = Worker.objects.filter(pool=pool)
    if not workers.exists():
        if pool == "default":
            return {}  # a fresh install: its first worker may not have started yet
        known = sorted(set(Worker.objects.values_list("pool", flat=True)))[:20]
        return {"resources.pool": f"unknown pool {pool[:64]!r}; known pools: {', '.join(known) or 'none'}"}
    if gpus > 0:
        largest = _largest_gpu_counts(pool).get(pool, 0)
        if gpus > largest:
            return {"resources.gpus": f"needs {gpus} GPUs; the largest {pool} worker has {largest}"}
        if owner is not None:
            # Above the owner's quota, a run would wait for ever, admitted by no pass.
            limit, _ = limit_of(owner)
            if gpus * nodes > limit:
                field = "resources.gpus" if nodes == 1 else "resources.nodes"
                return {field: f"needs {gpus * nodes} GPUs; your quota is {limit} GPUs at once"}
    if nodes > 1:
        return _gang_problem(pool, gpus, nodes)
    return {}


def _gang_problem(pool: str, gpus: int, nodes: int) -> dict[str, str]:
    """A gang needs `nodes` workers of the pool, each with `gpus` GPUs (or a CPU slot)."""
    kind = DeviceKind.GPU if gpus > 0 else DeviceKind.SLOT
    sizes = (
        Device.objects.filter(kind=kind, worker__pool=pool).values("worker_id").annotate(count=Count("id"))
    )
    big_enough = sum(1 for row in sizes if row["count"] >= max(gpus, 1))
    if big_enough < nodes:
        each = f"{gpus} GPUs" if gpus > 0 else "a CPU slot"
        return {"resources.nodes": f"needs {nodes} workers with {each} each; pool {pool} has {big_enough}"}
    return {}
