"""The one function that changes a run's status, and the writes that go with it.

`perform` is a conditional UPDATE built from a row of `runs.lifecycle.table`: it matches only a
run in one of the row's source statuses (and, for fenced rows, held by the named attempt), so a
change that raced with another one (two cancels, a claim and a cancel, a stale supervisor and
the reconciler) matches no row instead of overwriting the winner. In the same transaction it
counts a run that just finished, appends the audit record the row names, and broadcasts the new
status once the transaction commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit import chain as audit
from ops.outcomes import count_finished
from runs import events
from runs.lifecycle.listeners import TransitionEvent, notify
from runs.lifecycle.table import ATTEMPT_OUTCOMES, LIVE_STATUSES, RULES, Trigger
from runs.models import Run, RunAttempt

log = structlog.get_logger(__name__)

Actor = AbstractBaseUser | AnonymousUser | None


def status_frame(run: Run) -> events.StatusFrame:
    return {
        "type": "status",
        "status": run.status,
        "attempt": run.attempt,
        "phase": run.phase,
        "progress_step": run.progress_step,
        "progress_total": run.progress_total,
        "error_kind": run.error_kind,
        "error_message": run.error_message,
    }


def broadcast_status_on_commit(run_id: int) -> None:
    """Send the run's status frame once committed: a viewer never sees a change that rolls back."""

    def send() -> None:
        run = Run.objects.filter(pk=run_id).first()
        if run is not None:
            events.publish(run_id, status_frame(run))

    transaction.on_commit(send)


def live_runs() -> QuerySet[Run]:
    """Runs an attempt holds (or held until its lease ran out)."""
    return Run.objects.filter(status__in=LIVE_STATUSES)


def queued_runs() -> QuerySet[Run]:
    """Runs a worker may claim (once due)."""
    return Run.objects.filter(status__in=RULES[Trigger.CLAIM].sources)


def held_by(run_id: int, attempt: int) -> QuerySet[Run]:
    """The run, if `attempt` still holds it: the fencing condition of every supervisor write."""
    return live_runs().filter(pk=run_id, attempt=attempt)


def perform(
    run_id: int,
    trigger: Trigger,
    *,
    changes: Mapping[str, Any] | None = None,
    attempt: int | None = None,
    where: Q | None = None,
    actor: Actor = None,
    audit_details: dict[str, Any] | None = None,
) -> bool:
    """Move the run along the row for `trigger`; False when the run was not in a source status
    (or `where` did not match, or `attempt` no longer holds it), and then nothing is written.

    `changes` are the other columns the transition sets (times, error fields); `where` narrows
    the match further (a claim only takes a due run, an expiry only a lease that ran out).
    """
    rule = RULES[trigger]
    if not rule.sources:
        raise ValueError(f"{trigger} inserts a run; use create_run")
    if rule.fenced and attempt is None:
        raise ValueError(f"{trigger} is fenced: name the attempt")
    fields = dict(changes or {})
    failure_kind = str(fields.get("error_kind", ""))
    matching = Run.objects.filter(pk=run_id, status__in=rule.sources)
    if attempt is not None:
        matching = matching.filter(attempt=attempt)
    if where is not None:
        matching = matching.filter(where)
    # No savepoint: these writes commit or roll back with the caller's transaction.
    with transaction.atomic(savepoint=False):
        # The status condition is the whole guard: of two racing writers only one matches the row;
        # the row lock it takes orders this transaction before any later writer of the same run.
        if not matching.update(status=rule.target, **{"updated_at": timezone.now(), **fields}):
            return False
        if rule.finishes:
            program = Run.objects.filter(pk=run_id).values_list("program", flat=True).get()
            count_finished(program, rule.target, failure_kind)
        if rule.audit_action:
            # After the UPDATE, so every transition takes the row lock before the audit lock.
            audit.record(rule.audit_action, actor=actor, target=Run(pk=run_id), details=audit_details or {})
        if rule.changes_status:
            broadcast_status_on_commit(run_id)
            # In this transaction: the fleet frees devices atomically with the status change.
            notify(TransitionEvent(run_id, str(trigger), rule.sources, rule.target))
    log.info("run_transition", run_id=run_id, trigger=str(trigger), status=str(rule.target), attempt=attempt)
    return True


def create_run(
    fields: Mapping[str, Any],
    *,
    actor: Actor,
    audit_details: Mapping[str, Any] | None = None,
    trigger: Trigger = Trigger.LAUNCH,
) -> Run:
    """Insert a run in the status of its inserting row (`launch`, or `start.external`), audited
    and broadcast with it."""
    rule = RULES[trigger]
    if rule.sources:
        raise ValueError(f"{trigger} does not insert a run")
    with transaction.atomic(savepoint=False):
        run = Run.objects.create(**{**fields, "status": rule.target})
        audit.record(rule.audit_action, actor=actor, target=run, details=dict(audit_details or {}))
        broadcast_status_on_commit(run.pk)
        notify(TransitionEvent(run.pk, str(trigger), rule.sources, rule.target))
    return run


def open_attempt(run_id: int, number: int, worker: str, now: datetime) -> RunAttempt:
    """The attempt row of a claim; it is open (`running`) until `close_attempt`."""
    return RunAttempt.objects.create(run_id=run_id, number=number, worker=worker[:255], started_at=now)


def close_attempt(run_id: int, number: int, outcome: str, now: datetime, **fields: Any) -> None:
    """Record how an attempt ended; `lost` when its lease ran out."""
    if outcome not in ATTEMPT_OUTCOMES:
        raise ValueError(f"an attempt cannot end {outcome!r}")
    RunAttempt.objects.filter(run_id=run_id, number=number).update(status=outcome, finished_at=now, **fields)
