"""runs/attempts.py: the attempt number is a fencing token; a stale attempt writes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db.models import F
from django.utils import timezone

from runs import attempts
from runs.attempts import Outcome, StaleAttempt
from runs.models import Checkpoint, Run, RunStatus

pytestmark = pytest.mark.django_db
QUEUE = "test-fencing"  # nothing consumes it


def taken_over(owner: User) -> tuple[Run, int]:
    """A run claimed by attempt 1, then taken by a newer attempt: returns the run and the stale number."""
    run = Run.objects.create(name="fenced", owner=owner, program="scripted", queue=QUEUE)
    claim = attempts.claim_run(run.pk, "worker-old")
    assert claim is not None
    Run.objects.filter(pk=run.pk).update(attempt=F("attempt") + 1)
    return run, claim.attempt


def test_a_stale_attempt_cannot_read_its_status_as_live(owner: User) -> None:
    run, stale = taken_over(owner)
    with pytest.raises(StaleAttempt, match="is no longer live"):
        attempts.current_status(run.pk, stale)
    assert attempts.current_status(run.pk, stale + 1) == RunStatus.RUNNING


def test_a_stale_attempt_cannot_register_a_checkpoint(owner: User) -> None:
    run, stale = taken_over(owner)
    with pytest.raises(StaleAttempt, match="may no longer write"):
        attempts.register_checkpoint(run.pk, stale, 10, "checkpoints/step-10.pt", 3, "0" * 64)
    assert not Checkpoint.objects.filter(run=run).exists()


def test_a_stale_attempt_cannot_conclude_the_run(owner: User) -> None:
    run, stale = taken_over(owner)
    assert attempts.finish_attempt(run.pk, stale, Outcome(RunStatus.SUCCEEDED, 0)) is None
    run.refresh_from_db()
    assert (run.status, run.finished_at) == (RunStatus.RUNNING, None)


def test_a_lease_that_has_not_run_out_is_not_expired(owner: User) -> None:
    run, _ = taken_over(owner)
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=60))
    assert attempts.expire_lease(run.pk, timezone.now()) is None
    assert Run.objects.get(pk=run.pk).status == RunStatus.RUNNING
