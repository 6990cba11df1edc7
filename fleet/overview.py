"""The Workers page's model: pools, their workers, and each worker's devices as grid cells.

Built from `fleet.selectors.describe_workers` (what `GET /api/v1/workers/` returns), so the page
and the API agree on state, devices and holders. Only the names of runs the viewer may read
(`accounts.policy.restrict` with `run.read`, the rule every run page follows) are shown; a device
held by any other run says only that it is in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Count
from django.urls import reverse

from accounts.policy import Action, Principal, restrict
from fleet.models import DeviceKind
from runs import lifecycle
from runs.models import Run

# Holder colours: classes `holder-0` … `holder-7` in static/css/fleet.css. A run's colour is its
# id modulo this, so it is the same on every load and every worker (the CSP forbids inline
# styles, hence a fixed palette of classes rather than a computed colour).
HOLDER_COLOURS = 8
GIB = 2**30


@dataclass(frozen=True)
class Holder:
    """A run holding devices, as the legend names it; `visible` False: the viewer may not read it."""

    run_id: int
    visible: bool
    name: str
    url: str
    status: str
    colour: str  # the CSS class, "holder-N"; "holder-hidden" when not visible
    devices: int = 0

    @property
    def label(self) -> str:
        return f"#{self.run_id} {self.name}" if self.visible else "a run you may not see"


@dataclass(frozen=True)
class DeviceCell:
    label: str  # what the cell prints: the GPU index, or "S0" for a CPU slot
    kind: str
    description: str  # tooltip and accessible name: device, model, memory, holder
    holder: Holder | None


@dataclass
class WorkerCard:
    id: int
    name: str
    host: str
    state: str
    heartbeat_at: datetime
    heartbeat_ago: str
    cells: list[DeviceCell]
    holders: list[Holder]
    gpus: int
    slots: int
    in_use: int

    @property
    def capacity(self) -> str:
        unit = "GPU" if self.gpus else "CPU slot"
        total = self.gpus or self.slots
        return f"{self.in_use} of {total} {unit}{'s' if total != 1 else ''} in use"


@dataclass
class PoolGroup:
    name: str
    workers: list[WorkerCard] = field(default_factory=list)
    waiting: int = 0  # runs waiting for admission in this pool

    def _count(self, attribute: str, live_only: bool = False) -> int:
        return sum(getattr(w, attribute) for w in self.workers if not live_only or w.state != "lost")

    @property
    def summary(self) -> str:
        states = [w.state for w in self.workers]
        parts = [f"{len(states)} worker{'s' if len(states) != 1 else ''}"]
        parts += [f"{states.count(s)} {s}" for s in ("draining", "lost") if s in states]
        gpus, slots = self._count("gpus"), self._count("slots")
        if gpus:
            used = sum(w.in_use for w in self.workers if w.gpus)
            parts.append(f"{used} of {gpus} GPUs in use")
        if slots:
            used = sum(w.in_use for w in self.workers if not w.gpus)
            parts.append(f"{used} of {slots} CPU slots in use")
        parts.append(f"{self.waiting} run{'s' if self.waiting != 1 else ''} waiting")
        return " · ".join(parts)


def ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _describe_device(device: dict[str, Any]) -> str:
    if device["kind"] == DeviceKind.SLOT:
        return f"CPU slot {device['index']}"
    parts = [f"GPU {device['index']}"]
    if device["model"]:
        parts.append(device["model"])
    if device["memory_bytes"]:
        parts.append(f"{device['memory_bytes'] / GIB:.0f} GiB")
    return " · ".join(parts)


def _holder(run: dict[str, Any], readable: set[int]) -> Holder:
    run_id = int(run["id"])
    if run_id not in readable:
        return Holder(run_id, False, "", "", "", "holder-hidden")
    return Holder(
        run_id,
        True,
        str(run["name"]),
        reverse("run-detail", args=[run_id]),
        str(run["status"]),
        f"holder-{run_id % HOLDER_COLOURS}",
    )


def _card(worker: dict[str, Any], readable: set[int], now: datetime) -> WorkerCard:
    cells: list[DeviceCell] = []
    holders: dict[int, Holder] = {}
    counts: dict[int, int] = {}
    for device in worker["devices"]:
        holder = None
        described = _describe_device(device)
        if device["run"] is not None:
            holder = holders.setdefault(device["run"]["id"], _holder(device["run"], readable))
            counts[holder.run_id] = counts.get(holder.run_id, 0) + 1
            described += f" · held by {holder.label}"
        else:
            described += " · free"
        label = f"S{device['index']}" if device["kind"] == DeviceKind.SLOT else str(device["index"])
        cells.append(DeviceCell(label, device["kind"], described, holder))
    legend = [
        Holder(h.run_id, h.visible, h.name, h.url, h.status, h.colour, counts[h.run_id])
        for h in holders.values()
    ]
    return WorkerCard(
        id=worker["id"],
        name=worker["name"],
        host=worker["host"],
        state=worker["state"],
        heartbeat_at=worker["heartbeat_at"],
        heartbeat_ago=ago(worker["heartbeat_at"], now),
        cells=cells,
        holders=legend,
        gpus=sum(1 for c in cells if c.kind == DeviceKind.GPU),
        slots=sum(1 for c in cells if c.kind == DeviceKind.SLOT),
        in_use=sum(1 for c in cells if c.holder is not None),
    )


def waiting_by_pool() -> dict[str, int]:
    """Runs waiting for admission (queued, not yet placed) per pool they ask for."""
    rows = (
        lifecycle.queued_runs()
        .filter(queue="")
        .values("resources__pool")
        .annotate(count=Count("id"))
        .values_list("resources__pool", "count")
    )
    found: dict[str, int] = {}
    for pool, count in rows:
        key = str(pool or "default")
        found[key] = found.get(key, 0) + count
    return found


def pools(principal: Principal, workers: list[dict[str, Any]], now: datetime) -> list[PoolGroup]:
    """The workers grouped by pool (pools by name, workers by name), with readable holders named."""
    held = {device["run"]["id"] for w in workers for device in w["devices"] if device["run"]}
    readable = set(
        restrict(principal, Action.RUN_READ, Run.objects.filter(pk__in=held)).values_list("pk", flat=True)
    )
    waiting = waiting_by_pool()
    groups: dict[str, PoolGroup] = {}
    for worker in workers:
        pool = worker["pool"]
        group = groups.setdefault(pool, PoolGroup(pool, waiting=waiting.get(pool, 0)))
        group.workers.append(_card(worker, readable, now))
    for pool, count in waiting.items():
        # Runs wait in a pool no worker has joined yet (a fresh install's `default`): say so.
        groups.setdefault(pool, PoolGroup(pool, waiting=count))
    return [groups[name] for name in sorted(groups)]
