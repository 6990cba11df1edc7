"""Celery tasks: thin wrappers that take ids and hand over to services and the supervisor."""

from __future__ import annotations

from celery import shared_task

from workers.supervisor import Supervisor


@shared_task(name="workers.tasks.supervise_run", acks_late=True, ignore_result=True)
def supervise_run(run_id: int) -> str:
    # The claim inside makes a second delivery of this task a no-op, so acks_late (redelivery
    # after a lost worker) is safe.
    return Supervisor(run_id).run()


@shared_task(name="workers.tasks.housekeeping_reconcile", acks_late=True, ignore_result=True)
def housekeeping_reconcile() -> dict[str, int]:
    from runs.reconciler import reconcile

    return reconcile().as_dict()
