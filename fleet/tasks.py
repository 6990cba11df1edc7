"""Celery tasks of the fleet (the beat's safety-net pass, on the housekeeping queue)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="fleet.tasks.housekeeping_schedule", acks_late=True, ignore_result=True)
def housekeeping_schedule() -> dict[str, int]:
    from fleet.scheduler import schedule_pass

    report = schedule_pass()
    return {"placed": len(report.placed), "waiting": report.waiting, "released": report.released}
