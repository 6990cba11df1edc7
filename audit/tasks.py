"""Celery tasks of the audit log: the beat task that verifies the chain, signs and anchors its head
and publishes the result as gauges; and the summary of a window of repeated records."""

from __future__ import annotations

import time

from celery import shared_task

from audit.checkpoints import do_write_checkpoint
from audit.repeats import flush_repeated


@shared_task(name="audit.tasks.housekeeping_audit_checkpoint", acks_late=True, ignore_result=True)
def housekeeping_audit_checkpoint() -> dict[str, object]:
    # Idempotent: a redelivered task finds the head already signed and writes nothing.
    outcome = do_write_checkpoint()
    from ops.audit_metrics import audit_state  # the gauges live in the process that verified

    audit_state.set(outcome.ok, time.time(), outcome.anchored_at)
    return outcome.as_dict()


@shared_task(name="audit.tasks.flush_repeated_records", acks_late=True, ignore_result=True)
def flush_repeated_records(token: str) -> int | None:
    # Sent with a countdown when a window of repeated records opens (audit.repeats); the id of the
    # summary record, None when the window saw no repeat.
    summary = flush_repeated(token)
    return summary.pk if summary is not None else None
