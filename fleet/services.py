"""Fleet writes that people ask for: draining a worker. The API (`POST /api/v1/workers/{id}/drain/`)
and the Workers page (`POST /workers/{id}/drain/`) both call `do_drain_worker`, so both lock,
audit and reschedule the same way."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import Http404

from audit import chain as audit
from fleet.models import Worker, WorkerState
from fleet.preemption import preempt_worker
from fleet.scheduler import schedule_pass_on_commit


def do_drain_worker(actor: Any, worker_id: int, *, preempt: bool = False) -> tuple[Worker, list[int]]:
    """Stop new placements on the worker (its runs finish), and with `preempt` also stop its
    preemptible running runs so they resume elsewhere. Returns the worker, refreshed, and the ids
    of the runs asked to stop. 404 for a worker that does not exist."""
    with transaction.atomic():
        # Locked so that a heartbeat (which upserts the row) cannot race the state change.
        worker = Worker.objects.select_for_update().filter(pk=worker_id).first()
        if worker is None:
            raise Http404("No such worker.")
        Worker.objects.filter(pk=worker.pk).update(state=WorkerState.DRAINING)
        stopped = preempt_worker(worker.pk) if preempt else []
        audit.record("fleet.drain", actor=actor, target=worker, details={"preempted": stopped})
        schedule_pass_on_commit("drain")
    worker.refresh_from_db()
    return worker, stopped
