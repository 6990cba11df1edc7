"""Celery beat task: verify the audit chain, sign its head, and publish the result as gauges."""

from __future__ import annotations

import time

from celery import shared_task

from audit.checkpoints import do_write_checkpoint


@shared_task(name="audit.tasks.housekeeping_audit_checkpoint", acks_late=True, ignore_result=True)
def housekeeping_audit_checkpoint() -> dict[str, object]:
    # Idempotent: a redelivered task finds the head already signed and writes nothing.
    outcome = do_write_checkpoint()
    from ops.audit_metrics import audit_state  # the gauges live in the process that verified

    audit_state.set(outcome.ok, time.time(), outcome.anchored_at)
    return outcome.as_dict()
