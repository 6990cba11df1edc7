"""Celery tasks: thin wrappers that take ids and hand over to services and the supervisor."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from fleet.admission import Seat
from fleet.agent import local_worker
from workers.supervisor import Supervisor


@shared_task(name="workers.tasks.supervise_run", bind=True, acks_late=True, ignore_result=True)
def supervise_run(self: Task[Any, Any], run_id: int) -> str:
    # The claim inside makes a second delivery of this task a no-op, so acks_late (redelivery
    # after a lost worker) is safe. Delivered by a worker, the claim also requires the run's
    # devices to be reserved on this worker (fleet.admission): a stale message starts nothing.
    worker = local_worker(getattr(self.request, "hostname", None))
    return Supervisor(run_id, seat=Seat(worker) if worker else None).run()


@shared_task(name="workers.tasks.housekeeping_reconcile", acks_late=True, ignore_result=True)
def housekeeping_reconcile() -> dict[str, int]:
    from fleet.scheduler import schedule_pass
    from runs.reconciler import reconcile

    report = reconcile().as_dict()
    # Runs queued again after a backoff become due here: admit them now, not at the next event.
    report["placed"] = len(schedule_pass().placed)
    return report
