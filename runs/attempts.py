"""Writes made by the supervisor of one run attempt (its batches of lines and points: runs/batches.py).

Every write names the attempt it belongs to and matches no row once another attempt has taken
the run: that is the fencing that keeps a stale supervisor (a redelivered task, a worker back
from a network partition) from touching a run it no longer owns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from redaction import redact, redact_value
from runs import lifecycle
from runs.lifecycle import LIVE_STATUSES, Trigger
from runs.models import Artifact, Checkpoint, ErrorKind, LogStream, Run, RunAttempt, RunStatus
from runs.reliability import after_failure

log = structlog.get_logger(__name__)


class StaleAttempt(Exception):
    """The run has moved on: another attempt owns it, or it is no longer live."""


@dataclass(frozen=True)
class Claim:
    run_id: int
    attempt: int
    program: str
    params: dict[str, Any]
    secrets: list[str]
    request_id: str
    max_duration_seconds: int | None = None
    kind: str = "program"
    snapshot: str | None = None  # a code run's snapshot (sha256) and its command
    command: tuple[str, ...] = ()


def _lease_deadline(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.CONTROLPLANE["LEASE_SECONDS"])


def claim_run(run_id: int, worker: str, *, admitted: Callable[[int], bool] | None = None) -> Claim | None:
    """Take a queued, due run for a new attempt, or None (a duplicate delivery, or not yet due).

    `admitted(run_id)` (the fleet's check that the run's devices are reserved on this worker) is
    asked with the run row locked: the scheduler locks the same row before it moves an admission,
    so what the check read still holds when the claim commits.
    """
    now = timezone.now()
    with transaction.atomic():
        if admitted is not None:
            if not lifecycle.queued_runs().select_for_update().filter(pk=run_id).exists():
                return None
            if not admitted(run_id):
                return None
        # The claim row only matches a queued run: of two deliveries of the same task, only one
        # UPDATE matches; the other sees zero rows and starts nothing.
        claimed = lifecycle.perform(
            run_id,
            Trigger.CLAIM,
            where=Q(not_before__isnull=True) | Q(not_before__lte=now),
            changes={
                "attempt": F("attempt") + 1,
                "worker": worker[:255],
                "started_at": now,
                "heartbeat_at": now,
                "lease_expires_at": _lease_deadline(now),
                "not_before": None,
                "finished_at": None,
                "exit_code": None,
                "error_kind": "",
                "error_code": "",
                "error_message": "",
                "phase": "starting",
                "device": "",
            },
        )
        if not claimed:
            return None
        run = Run.objects.get(pk=run_id)
        lifecycle.open_attempt(run_id, run.attempt, worker, now)
    return _claim_of(run)


def joined_claim(run_id: int, attempt: int) -> Claim | None:
    """The attempt another node of a gang claimed, as this node runs it (fleet.gang); None once over."""
    run = lifecycle.held_by(run_id, attempt).first()
    return _claim_of(run) if run is not None else None


def _claim_of(run: Run) -> Claim:
    return Claim(
        run_id=run.pk,
        attempt=run.attempt,
        program=run.program,
        params=dict(run.params),
        secrets=list(run.secrets),
        request_id=run.request_id,
        max_duration_seconds=run.max_duration_seconds,
        kind=run.kind,
        snapshot=run.snapshot_id,
        command=tuple(run.command),
    )


def resume_candidates(run_id: int) -> list[Checkpoint]:
    """The run's checkpoints, newest first: the supervisor verifies each before resuming."""
    return list(Checkpoint.objects.filter(run_id=run_id).order_by("-step"))


def note_resume(run_id: int, attempt: int, step: int) -> None:
    RunAttempt.objects.filter(run_id=run_id, number=attempt).update(resumed_from_step=step)


def renew_lease(run_id: int, attempt: int) -> str:
    """Extend the lease; returns the run's status (`cancelling` asks the supervisor to stop)."""
    now = timezone.now()
    renewed = lifecycle.held_by(run_id, attempt).update(
        heartbeat_at=now, lease_expires_at=_lease_deadline(now)
    )
    if not renewed:
        raise StaleAttempt(f"run {run_id} attempt {attempt} lost its lease")
    return current_status(run_id, attempt)


def current_status(run_id: int, attempt: int) -> str:
    row = Run.objects.filter(pk=run_id, attempt=attempt).values_list("status", flat=True).first()
    if row is None or row not in LIVE_STATUSES:
        raise StaleAttempt(f"run {run_id} attempt {attempt} is no longer live")
    return str(row)


def _assert_owner(run_id: int, attempt: int) -> None:
    # Row lock: a concurrent claim by another attempt waits for this transaction, or wins first
    # and makes this check fail. Either way no stale row is written.
    if not lifecycle.held_by(run_id, attempt).select_for_update().exists():
        raise StaleAttempt(f"run {run_id} attempt {attempt} may no longer write")


def register_checkpoint(
    run_id: int, attempt: int, step: int, path: str, size: int, sha256: str, storage_key: str = ""
) -> None:
    with transaction.atomic():
        _assert_owner(run_id, attempt)
        Checkpoint.objects.update_or_create(
            run_id=run_id,
            step=step,
            defaults={
                "attempt": attempt,
                "path": path,
                "size": size,
                "sha256": sha256,
                "storage_key": storage_key,
                "created_at": timezone.now(),
            },
        )


def register_artifact(
    run_id: int,
    attempt: int,
    *,
    name: str,
    kind: str,
    size: int,
    sha256: str,
    storage_key: str,
    metadata: dict[str, Any],
) -> Artifact:
    with transaction.atomic():
        _assert_owner(run_id, attempt)
        artifact, _ = Artifact.objects.update_or_create(
            run_id=run_id,
            name=name,
            defaults={
                "attempt": attempt,
                "kind": kind[:32],
                "size": size,
                "sha256": sha256,
                "storage_key": storage_key,
                # A program may write a secret into its model file's header: the stored copy (the
                # artifacts list, the preview) holds it masked, as every other field does.
                "metadata": redact_value(metadata),
                "created_at": timezone.now(),
            },
        )
    return artifact


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    exit_code: int | None = None
    error_kind: str = ""
    error_code: str = ""
    error_message: str = ""


def finish_attempt(run_id: int, attempt: int, outcome: Outcome) -> RunStatus | None:
    """Record the end of an attempt and what follows (a retry, a dead letter, or the end).

    Returns the run's new status, or None when the attempt had already lost the run.
    """
    now = timezone.now()
    with transaction.atomic():
        run = lifecycle.held_by(run_id, attempt).select_for_update().first()
        if run is None:
            return None
        status = _conclude(run, attempt, outcome, now, lifecycle.EXIT_TRIGGERS)
    return status


def _conclude(
    run: Run,
    attempt: int,
    outcome: Outcome,
    now: datetime,
    triggers: tuple[Trigger, ...],
    attempt_status: RunStatus | None = None,
) -> RunStatus:
    """Apply an attempt's outcome to a locked, live run, along the one row of `triggers` that
    ends in the status the outcome (and the retry policy) leads to."""
    status = outcome.status
    # Masks the secrets this worker holds, for messages that did not come through a supervisor.
    message = redact(outcome.error_message)[:4000]
    not_before = None
    preempted: dict[str, Any] = {}
    if status == RunStatus.FAILED:
        step = after_failure(outcome.error_kind, attempt, run.max_attempts, now)
        status, not_before = step.status, step.not_before
    if status == RunStatus.PREEMPTED and run.status == RunStatus.PREEMPTED:
        # Queued again at its old place (created_at is kept); a preemption spends no retry.
        status, trigger = RunStatus.QUEUED, Trigger.EXIT_PREEMPTED
        preempted = {"preempt_count": F("preempt_count") + 1, "max_attempts": F("max_attempts") + 1}
    else:
        status = RunStatus.FAILED if status == RunStatus.PREEMPTED else status
        trigger = lifecycle.trigger_for(triggers, status)
    errors = {
        "exit_code": outcome.exit_code,
        "error_kind": outcome.error_kind,
        "error_code": outcome.error_code[:64],
        "error_message": message,
    }
    lifecycle.close_attempt(run.pk, attempt, attempt_status or outcome.status, now, **errors)
    requeued = status == RunStatus.QUEUED
    # A run queued again waits for a new message; a finished one keeps its dispatch time.
    requeue_fields = {"enqueued_at": None} if requeued else {}
    changes = {"finished_at": None if requeued else now, "lease_expires_at": None, "not_before": not_before}
    # Fenced on the attempt: the caller holds the row lock, and the UPDATE still names the attempt.
    if not lifecycle.perform(
        run.pk,
        trigger,
        attempt=attempt,
        changes={**changes, **requeue_fields, **errors, **preempted, "phase": ""},
    ):
        raise StaleAttempt(f"run {run.pk} attempt {attempt} may no longer conclude")
    log.info(
        "attempt_concluded",
        run_id=run.pk,
        attempt=attempt,
        outcome=outcome.status,
        next_status=status,
        error_kind=outcome.error_kind,
        retry_at=not_before.isoformat() if not_before else None,
    )
    return status


def expire_lease(run_id: int, now: datetime) -> RunStatus | None:
    """Conclude a live attempt whose lease ran out (its worker is gone or cut off)."""
    with transaction.atomic():
        # Locked and re-checked: a supervisor that renewed its lease (or concluded) since the
        # reconciler listed it keeps its run.
        run = lifecycle.live_runs().select_for_update().filter(pk=run_id, lease_expires_at__lt=now).first()
        if run is None:
            return None
        if run.status == RunStatus.CANCELLING:
            outcome = Outcome(
                RunStatus.CANCELLED, None, ErrorKind.CANCELLED, "cancelled", "cancelled; its worker was lost"
            )
        else:
            outcome = Outcome(
                RunStatus.FAILED,
                None,
                ErrorKind.INFRASTRUCTURE,
                "lease_expired",
                f"worker {run.worker or '?'} stopped renewing its lease (last heartbeat {run.heartbeat_at})",
            )
        # The attempt itself was lost, whatever the run does next.
        return _conclude(run, run.attempt, outcome, now, lifecycle.LEASE_EXPIRY_TRIGGERS, RunStatus.LOST)


def system_line(text: str) -> tuple[datetime, str, str]:
    """A log line written by the control plane itself (start, exit, skipped events)."""
    return (timezone.now(), LogStream.SYSTEM.value, text)


def finite_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
