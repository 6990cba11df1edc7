"""The reconciler and the retry policy, against the real database and the real Redis broker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from runs.attempts import Outcome, claim_run, finish_attempt
from runs.broker import pending_run_ids
from runs.models import ErrorKind, Run, RunAttempt, RunStatus
from runs.reconciler import reconcile

pytestmark = pytest.mark.django_db
QUEUE = "test-reconciler"  # no worker listens here, so messages stay put for inspection


@pytest.fixture(autouse=True)
def empty_queue() -> Iterator[None]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(QUEUE)
    yield
    client.delete(QUEUE)


def queued_run(owner: User, **fields: object) -> Run:
    return Run.objects.create(name="r", owner=owner, program="scripted", queue=QUEUE, **fields)


def running_run(owner: User, **fields: object) -> Run:
    run = queued_run(owner, **fields)
    assert claim_run(run.pk, "worker-a") is not None
    return Run.objects.get(pk=run.pk)


def messages_in_queue() -> set[int]:
    """Run ids with a message waiting in the tests' queue (the broker answers here)."""
    pending = pending_run_ids([QUEUE])
    assert pending is not None
    return pending


def after_lease(run: Run) -> datetime:
    assert run.lease_expires_at is not None
    return run.lease_expires_at + timedelta(seconds=1)


def test_a_run_whose_lease_expired_is_queued_again_with_a_backoff(owner: User) -> None:
    run = running_run(owner)
    later = after_lease(run)
    report = reconcile(later)
    assert report.requeued == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert run.error_kind == ErrorKind.INFRASTRUCTURE
    assert run.error_code == "lease_expired"
    assert run.not_before is not None and run.not_before > later
    assert RunAttempt.objects.get(run=run, number=1).status == RunStatus.LOST


def test_a_run_that_spent_its_attempts_is_dead_lettered(owner: User) -> None:
    run = running_run(owner, max_attempts=1)
    report = reconcile(after_lease(run))
    assert report.dead == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.DEAD
    assert run.finished_at is not None


def test_a_cancelling_run_whose_worker_vanished_ends_cancelled(owner: User) -> None:
    run = running_run(owner)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLING)
    reconcile(after_lease(run))
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED


def test_live_leases_are_left_alone(owner: User) -> None:
    run = running_run(owner)
    assert reconcile().leases_expired == []
    assert Run.objects.get(pk=run.pk).status == RunStatus.RUNNING


def test_a_queued_run_older_than_its_ttl_fails_as_a_timeout(owner: User) -> None:
    old = queued_run(owner, queue_ttl_seconds=60, created_at=timezone.now() - timedelta(minutes=2))
    young = queued_run(owner, queue_ttl_seconds=600)
    report = reconcile()
    assert report.expired_in_queue == [old.pk]
    old.refresh_from_db()
    assert (old.status, old.error_kind, old.error_code) == (RunStatus.FAILED, "timeout", "queue_ttl")
    assert Run.objects.get(pk=young.pk).status == RunStatus.QUEUED


def test_a_run_whose_enqueue_was_lost_is_dispatched(owner: User) -> None:
    run = queued_run(owner)
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now() - timedelta(seconds=30))
    # `in`, not `==`: the session stack's live reconciler may send runs other suites committed.
    assert run.pk not in messages_in_queue()
    assert run.pk in reconcile().dispatched
    assert run.pk in messages_in_queue()
    run.refresh_from_db()
    assert run.enqueued_at is not None
    assert run.dispatch_count == 1
    # Its message is in the broker now: the next pass sends nothing more.
    Run.objects.filter(pk=run.pk).update(enqueued_at=timezone.now() - timedelta(minutes=5))
    assert run.pk not in reconcile().dispatched


def test_a_message_lost_by_the_broker_is_sent_again(owner: User) -> None:
    run = queued_run(owner, enqueued_at=timezone.now() - timedelta(minutes=5))
    assert run.pk in reconcile().dispatched
    assert run.pk in messages_in_queue()


def test_a_fresh_launch_is_not_dispatched_twice(owner: User) -> None:
    run = queued_run(owner)
    assert run.pk not in reconcile().dispatched


@pytest.mark.parametrize(
    ("kind", "attempt_limit", "expected"),
    [
        (ErrorKind.INFRASTRUCTURE, 3, RunStatus.QUEUED),
        (ErrorKind.DEVICE, 3, RunStatus.QUEUED),
        (ErrorKind.INFRASTRUCTURE, 1, RunStatus.DEAD),
        (ErrorKind.CONFIG, 3, RunStatus.FAILED),
        (ErrorKind.PROGRAM, 3, RunStatus.FAILED),
        (ErrorKind.OOM, 3, RunStatus.FAILED),
        (ErrorKind.TIMEOUT, 3, RunStatus.FAILED),
    ],
)
def test_transient_failures_retry_and_permanent_ones_stop(
    owner: User, kind: str, attempt_limit: int, expected: RunStatus
) -> None:
    run = running_run(owner, max_attempts=attempt_limit)
    status = finish_attempt(run.pk, 1, Outcome(RunStatus.FAILED, 1, kind, "code", "message"))
    assert status == expected
    run.refresh_from_db()
    assert run.status == expected
    assert run.error_kind == kind
    assert (run.not_before is not None) == (expected == RunStatus.QUEUED)
    assert RunAttempt.objects.get(run=run, number=1).error_kind == kind


def test_a_retry_waits_for_its_backoff_before_it_can_be_claimed(owner: User) -> None:
    run = running_run(owner)
    finish_attempt(run.pk, 1, Outcome(RunStatus.FAILED, None, ErrorKind.INFRASTRUCTURE, "x", "y"))
    assert claim_run(run.pk, "worker-b") is None
    Run.objects.filter(pk=run.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    claim = claim_run(run.pk, "worker-b")
    assert claim is not None
    assert claim.attempt == 2


def test_backoff_grows_exponentially_with_jitter_up_to_a_cap() -> None:
    import random

    from runs.reliability import backoff

    rng = random.Random(7)
    base = settings.CONTROLPLANE["RETRY_BASE_SECONDS"]
    cap = settings.CONTROLPLANE["RETRY_MAX_SECONDS"]
    for attempt in range(1, 12):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        delays = [backoff(attempt, rng=rng).total_seconds() for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
