"""The scheduler's decisions, as pure functions over a snapshot (no database): who goes where.

Rules (docs/architecture.md, "Fleet"):
- Order: effective priority, highest first, then age (oldest first), then id. Effective priority
  is the run's priority plus one point per `CONTROLPLANE_AGING_MINUTES` it has waited since it was
  launched, at most +100: a run nobody outranks for long enough reaches the head.
- Hold-back (no starvation of big runs): the first run of a pool that fits the pool's largest
  worker but finds no room now blocks its pool for that kind of device: no run behind it in the
  pool is placed in this pass, so the devices that free up go to the head, not to a stream of
  small runs that keep jumping it. Runs a quota holds back, or that can never fit, do not block.
- Placement: best fit, the live active worker of the pool with the fewest free devices left
  after the placement (ties: the lowest id), lowest device indices first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from fleet.models import DeviceKind

AGING_CAP = 100


@dataclass
class WorkerRoom:
    """A live worker of the snapshot, and its free devices (`(device_id, index)`, by index)."""

    id: int
    name: str
    pool: str
    queue: str
    active: bool  # draining workers keep their runs but take no new ones
    total: dict[str, int] = field(default_factory=dict)  # kind -> devices it has
    free: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # kind -> free devices


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

    @property
    def kind(self) -> str:
        return DeviceKind.GPU if self.gpus > 0 else DeviceKind.SLOT

    @property
    def demand(self) -> int:
        return self.gpus if self.gpus > 0 else 1


@dataclass(frozen=True)
class Placement:
    candidate: Candidate
    worker: WorkerRoom
    device_ids: tuple[int, ...]


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # run id -> waiting reason ("" = its turn)
    # (pool, kind) -> the first run that fits the pool but found no room: the preemption target.
    blocked: dict[tuple[str, str], Candidate] = field(default_factory=dict)


def effective_priority(priority: int, created_at: datetime, now: datetime, aging_minutes: float) -> int:
    waited_minutes = max(0.0, (now - created_at).total_seconds() / 60.0)
    return priority + min(AGING_CAP, int(waited_minutes / aging_minutes))


def order(candidates: list[Candidate], now: datetime, aging_minutes: float) -> list[Candidate]:
    def key(run: Candidate) -> tuple[int, datetime, int]:
        return (
            -effective_priority(run.priority, run.created_at, now, aging_minutes),
            run.created_at,
            run.run_id,
        )

    return sorted(candidates, key=key)


@dataclass
class PoolStats:
    """Per pool, once per pass: live workers, the largest by kind, whether any is active."""

    largest: dict[str, int] = field(default_factory=dict)
    active: bool = False


def pool_stats(workers: list[WorkerRoom]) -> dict[str, PoolStats]:
    stats: dict[str, PoolStats] = {}
    for worker in workers:
        pool = stats.setdefault(worker.pool, PoolStats())
        pool.active = pool.active or worker.active
        for kind, count in worker.total.items():
            pool.largest[kind] = max(pool.largest.get(kind, 0), count)
    return stats


def unfit_reason(run: Candidate, pools: dict[str, PoolStats]) -> str | None:
    """Why `run` cannot be placed in its pool whatever frees up; None when it could be."""
    pool = pools.get(run.pool)
    if pool is None:
        return f"no live worker in pool {run.pool}"
    biggest = pool.largest.get(run.kind, 0)
    if run.kind == DeviceKind.SLOT and biggest == 0:
        return f"needs a CPU slot; no live {run.pool} worker offers CPU-only slots"
    if run.demand > biggest:
        return f"needs {run.gpus} GPUs; the largest {run.pool} worker has {biggest}"
    if not pool.active:
        return f"every live worker in pool {run.pool} is draining"
    return None


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
