"""The scheduler's decisions, as pure functions over a snapshot (no database): who goes where.

Rules (docs/architecture.md, "Fleet"):
- Order: effective priority, highest first, then age (oldest first), then id. Effective priority
  is the run's priority plus one point per `CONTROLPLANE_AGING_MINUTES` it has waited since it was
  launched, at most +100: a run nobody outranks for long enough reaches the head.
- Hold-back (no starvation of big runs): the first run of a pool that fits the pool's largest
  worker but finds no room now keeps ONE worker of the pool for that kind of device: the active
  worker big enough for it with the most free devices (ties: the lowest id). No run behind it is
  placed there in this pass, so the devices that free up there go to the head, not to a stream
  of small runs that keep jumping it; the pool's other workers keep taking the runs behind it.
  The kept worker has the most free devices of the pool and gets no new run, so that number never
  falls from pass to pass until the head fits. Runs a quota holds back, or that can never fit, do
  not hold anything back.
- Placement: best fit, the live active worker of the pool with the fewest free devices left
  after the placement (ties: the lowest id), lowest device indices first.
- Backfill (EASY, as Slurm's by time limit): a run behind a blocked head may take free devices
  of a worker kept for that head when its declared limit (`max_duration_seconds`) ends it before
  the head could start there anyway: the head's "shadow" time on that worker, from the limits of
  the runs holding its devices (unknown, so no backfill, when one of them declares none). The
  head never starts later for it; only runs the pass reads are candidates (it stops reading as
  before).
- Gangs (`resources.nodes` > 1, docs/distributed.md): all nodes or none, each on its own worker
  with `gpus` free devices, the best fits first (node 0 is the best fit). A blocked gang head
  keeps as many workers as it has nodes. Its quota use is `gpus` times `nodes`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

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
    # kind -> when each reserved device frees, in seconds from the snapshot (None: no limit).
    frees_in: dict[str, list[float | None]] = field(default_factory=dict)

    def shadow(self, head: Candidate) -> float | None:
        """Seconds until enough devices free here for `head` (its "shadow" time), from the limits
        of the runs holding them; None when a run it waits for declares no limit."""
        needed = head.demand - len(self.free.get(head.kind, []))
        if needed <= 0:
            return 0.0
        ends = sorted(self.frees_in.get(head.kind, []), key=lambda end: float("inf") if end is None else end)
        return ends[needed - 1] if needed <= len(ends) else None


class Candidate(NamedTuple):
    """A run waiting for admission (a tuple: a pass builds one per queued run, 10,000 of them)."""

    run_id: int
    owner_id: int
    owner_name: str
    pool: str
    gpus: int
    priority: int
    created_at: datetime | None  # None when the database ordered the queue (fleet.snapshot)
    request_id: str = ""
    nodes: int = 1  # a gang of this many workers, `gpus` (or one slot) on each
    max_seconds: int | None = None  # its declared limit (max_duration_seconds): backfill needs one

    @property
    def kind(self) -> str:
        return DeviceKind.GPU if self.gpus > 0 else DeviceKind.SLOT

    @property
    def demand(self) -> int:
        """Devices on each of its nodes."""
        return self.gpus if self.gpus > 0 else 1

    @property
    def total_gpus(self) -> int:
        """What counts against its owner's quota."""
        return self.gpus * self.nodes


@dataclass(frozen=True)
class Placement:
    """Node 0 of a run on `worker`; a gang's other nodes in `others`, by node rank."""

    candidate: Candidate
    worker: WorkerRoom
    device_ids: tuple[int, ...]
    others: tuple[tuple[WorkerRoom, tuple[int, ...]], ...] = ()

    def nodes(self) -> list[tuple[WorkerRoom, tuple[int, ...]]]:
        return [(self.worker, self.device_ids), *self.others]


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
    """The admission order, as the rule reads. The pass lets the database sort (fleet.snapshot's
    queue query, the same rule in SQL; tests/fleet/test_scheduler_order.py holds them equal)."""

    def key(run: Candidate) -> tuple[int, datetime, int]:
        created = run.created_at if run.created_at is not None else now
        return (-effective_priority(run.priority, created, now, aging_minutes), created, run.run_id)

    return sorted(candidates, key=key)


@dataclass
class PoolStats:
    """Per pool, once per pass: live workers, the largest by kind, whether any is active."""

    largest: dict[str, int] = field(default_factory=dict)
    active: bool = False
    sizes: dict[str, list[int]] = field(default_factory=dict)  # kind -> each live worker's devices


def pool_stats(workers: list[WorkerRoom]) -> dict[str, PoolStats]:
    stats: dict[str, PoolStats] = {}
    for worker in workers:
        pool = stats.setdefault(worker.pool, PoolStats())
        pool.active = pool.active or worker.active
        for kind, count in worker.total.items():
            pool.largest[kind] = max(pool.largest.get(kind, 0), count)
            pool.sizes.setdefault(kind, []).append(count)
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
    if run.nodes > 1:
        big_enough = sum(1 for size in pool.sizes.get(run.kind, []) if size >= run.demand)
        if big_enough < run.nodes:
            each = f"{run.gpus} GPUs" if run.gpus > 0 else "a CPU slot"
            return f"needs {run.nodes} workers with {each} each; pool {run.pool} has {big_enough}"
    if not pool.active:
        return f"every live worker in pool {run.pool} is draining"
    return None


def best_fit(run: Candidate, workers: list[WorkerRoom]) -> list[WorkerRoom]:
    """The run's workers, node 0 first: the `nodes` best fits, or [] when fewer have room."""
    fitting = [
        w for w in workers if w.active and w.pool == run.pool and len(w.free.get(run.kind, [])) >= run.demand
    ]
    if len(fitting) < run.nodes:
        return []
    if run.nodes == 1:
        return [min(fitting, key=lambda w: (len(w.free[run.kind]) - run.demand, w.id))]
    return sorted(fitting, key=lambda w: (len(w.free[run.kind]) - run.demand, w.id))[: run.nodes]


class Planner:
    """Places runs fed in admission order (`add`, chunk by chunk) onto `workers`; mutates their
    free lists. `served()` says when nothing further down the queue can change the pass.

    Linear in queued runs: what a run's pool can ever offer is computed once per (pool, kind,
    size), the workers are grouped by pool once, and a run bigger than the most free devices of
    any open worker of its pool (the common case on a busy fleet) costs a few dict lookups."""

    def __init__(self, workers: list[WorkerRoom], gpus_held: dict[int, int], gpu_limits: dict[int, int]):
        self.result = Plan()
        self.held = dict(gpus_held)
        self.limits = gpu_limits
        self.pools = pool_stats(workers)
        # (pool, kind) -> its workers still open to this pass's placements (not kept for a head).
        self.open_workers = by_pool_and_kind(workers)
        # (pool, kind) -> the most free devices on one open worker; dropped when a placement or
        # a hold-back changes it. A run bigger than that costs no scan of the pool's workers.
        self.most_free: dict[tuple[str, str], int] = {}
        self.unfit: dict[tuple[str, str, int, int], str | None] = {}
        # (pool, kind) -> the workers kept for its blocked head, each with the head's shadow there.
        self.kept: dict[tuple[str, str], list[tuple[WorkerRoom, float | None]]] = {}

    def room(self, key: tuple[str, str]) -> int:
        if key not in self.most_free:
            self.most_free[key] = max(
                (len(w.free.get(key[1], [])) for w in self.open_workers.get(key, []) if w.active), default=0
            )
        return self.most_free[key]

    def backfill(self, run: Candidate, key: tuple[str, str]) -> WorkerRoom | None:
        """A worker kept for the head of `key` that `run` may use now: it has the free devices,
        and the run's declared limit ends it before the head's shadow time there."""
        if run.nodes != 1 or run.max_seconds is None:
            return None
        for worker, shadow in self.kept.get(key, []):
            if shadow is not None and run.max_seconds <= shadow and len(worker.free[key[1]]) >= run.demand:
                return worker
        return None

    def served(self) -> bool:
        """True once every (pool, kind) of a pool with an active worker has its blocked head and
        no free device left on an open worker. A run further down the queue then gets its reason
        and nothing else: it cannot be placed (no room), cannot be a head (there is one) and
        changes no owner's GPUs held, so the rest of the queue need not be read."""
        return all(
            key in self.result.blocked and self.room(key) == 0
            for key in self.open_workers
            if self.pools[key[0]].active
        )

    def add(self, ordered: Iterable[Candidate]) -> None:
        result, held, unfit = self.result, self.held, self.unfit
        reasons, blocked, open_workers = result.reasons, result.blocked, self.open_workers
        for run in ordered:
            kind = DeviceKind.GPU if run.gpus > 0 else DeviceKind.SLOT
            shape = (run.pool, kind, run.gpus, run.nodes)
            if shape not in unfit:
                unfit[shape] = unfit_reason(run, self.pools)
            reason = unfit[shape]
            if reason is not None:
                reasons[run.run_id] = reason
                continue
            used = held.get(run.owner_id, 0)
            if run.gpus:
                limit = self.limits.get(run.owner_id, 0)
                if used + run.total_gpus > limit:
                    reasons[run.run_id] = f"quota: {run.owner_name} uses {used} of {limit} GPUs"
                    continue
            reasons[run.run_id] = ""
            key = (run.pool, kind)
            chosen = best_fit(run, open_workers.get(key, [])) if run.demand <= self.room(key) else []
            if not chosen and key not in blocked:
                blocked[key] = run
                if hold := hold_for(run, open_workers.get(key, [])):
                    open_workers[key] = [w for w in open_workers[key] if w not in hold]
                    self.kept[key] = [(worker, worker.shadow(run)) for worker in hold]
                    self.most_free.pop(key, None)
                continue
            if not chosen and (backfill := self.backfill(run, key)) is not None:
                chosen = [backfill]
            if not chosen:
                continue
            nodes = []
            for worker in chosen:
                taken, worker.free[kind] = worker.free[kind][: run.demand], worker.free[kind][run.demand :]
                nodes.append((worker, tuple(device_id for device_id, _ in taken)))
            self.most_free.pop(key, None)
            held[run.owner_id] = used + run.total_gpus
            result.placements.append(Placement(run, *nodes[0], others=tuple(nodes[1:])))


def plan(
    ordered: list[Candidate],
    workers: list[WorkerRoom],
    gpus_held: dict[int, int],
    gpu_limits: dict[int, int],
) -> Plan:
    """Place `ordered` (already in admission order) onto `workers`; mutates their free lists."""
    planner = Planner(workers, gpus_held, gpu_limits)
    planner.add(ordered)
    return planner.result


def by_pool_and_kind(workers: list[WorkerRoom]) -> dict[tuple[str, str], list[WorkerRoom]]:
    grouped: dict[tuple[str, str], list[WorkerRoom]] = {}
    for worker in workers:
        for kind in worker.total:
            grouped.setdefault((worker.pool, kind), []).append(worker)
    return grouped


def hold_for(head: Candidate, workers: list[WorkerRoom]) -> list[WorkerRoom]:
    """The workers kept for a head that found no room, one per node: the active ones big enough
    for it with the most free devices (ties: the lowest id), the first to have room as runs end."""
    big_enough = [w for w in workers if w.active and w.total.get(head.kind, 0) >= head.demand]
    return sorted(big_enough, key=lambda w: (-len(w.free.get(head.kind, [])), w.id))[: head.nodes]
