"""The worker's check before it claims a run, and the devices the run's program may see.

A fleet message is only a hint: the reservation rows say where a run goes. A worker claims a run
only when every device reserved for it is its own; a stale message (the run was freed and placed
elsewhere, or is waiting for admission again) starts nothing. Runs dispatched the old way (a
program queue such as `training`, no reservation) are claimed as before, during an upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.agent import QUEUE_PREFIX
from fleet.models import Device, DeviceKind, Reservation
from runs.models import Run


@dataclass(frozen=True)
class NodeSeat:
    """Which node of a gang this worker is (0: it claims the run and hosts the rendezvous)."""

    rank: int
    nodes: int


@dataclass(frozen=True)
class Seat:
    """This worker, as the fleet knows it (its Celery hostname)."""

    worker_name: str

    def admits(self, run_id: int) -> bool:
        """Called inside the claim's transaction, after the run row is locked. Of a gang, the
        worker of node 0 claims the run; the others join the attempt it opens (fleet.gang)."""
        holders = set(
            Reservation.objects.filter(run_id=run_id, node_rank=0).values_list(
                "device__worker__name", flat=True
            )
        )
        if holders:
            return holders == {self.worker_name}
        queue = Run.objects.filter(pk=run_id).values_list("queue", flat=True).first() or ""
        # No reservation: only a run dispatched the old way; "" waits for admission, and a worker
        # queue without a reservation is a message the fleet has since taken back.
        return bool(queue) and not queue.startswith(QUEUE_PREFIX)

    def node(self, run_id: int) -> NodeSeat | None:
        """This worker's node of a multi-node run; None for a one-node run (or none here)."""
        rows = set(Reservation.objects.filter(run_id=run_id).values_list("device__worker__name", "node_rank"))
        ranks = {rank for _, rank in rows}
        mine = [rank for name, rank in rows if name == self.worker_name]
        if len(ranks) < 2 or not mine:
            return None
        return NodeSeat(rank=mine[0], nodes=len(ranks))

    def gpus(self, run_id: int) -> tuple[int, ...] | None:
        """The GPU indices reserved for the run here; () for a CPU slot; None: not a fleet run
        (the program inherits the worker's CUDA_VISIBLE_DEVICES, as before the fleet)."""
        rows = list(
            Device.objects.filter(reservation__run_id=run_id, worker__name=self.worker_name)
            .order_by("index")
            .values_list("index", "kind")
        )
        if not rows:
            return None
        return tuple(index for index, kind in rows if kind == DeviceKind.GPU)
