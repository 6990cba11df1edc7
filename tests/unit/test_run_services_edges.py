"""runs/services.py at its edges: limits left open, too many secrets, repeated or late clicks on
cancel, retry, requeue and discard, and a broker that is down when a run is enqueued."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from runs.models import Run, RunStatus
from runs.services import (
    MAX_SECRETS,
    CancelError,
    DeadLetterError,
    LaunchError,
    RetryError,
    check_launch,
    do_cancel_run,
    do_discard_dead_run,
    do_requeue_dead_run,
    do_retry_run,
)
from tests.conftest import ROOT, free_port, process_env

QUEUE = "test-services-edges"  # nothing consumes it


def a_run(owner: User, status: str = RunStatus.QUEUED, **fields: Any) -> Run:
    return Run.objects.create(name="r", owner=owner, program="scripted", queue=QUEUE, status=status, **fields)


@pytest.mark.django_db
def test_a_duration_and_queue_ttl_given_as_null_mean_no_limit(owner: User) -> None:
    launch = check_launch(
        name="open",
        program="scripted",
        params={},
        limits={"max_duration_seconds": None, "queue_ttl_seconds": None, "max_attempts": 2},
        owner=owner,
    )
    assert (launch.max_duration_seconds, launch.queue_ttl_seconds, launch.max_attempts) == (None, None, 2)


@pytest.mark.django_db
def test_max_attempts_cannot_be_null_and_a_launch_names_every_bad_field(owner: User) -> None:
    with pytest.raises(LaunchError) as refused:
        check_launch(name=" ", program="scripted", params={}, limits={"max_attempts": None}, owner=owner)
    assert refused.value.errors == {
        "max_attempts": "must be an integer",
        "name": "a non-empty string is required",
    }


@pytest.mark.django_db
def test_more_secrets_than_the_bound_are_refused_before_any_is_looked_up(owner: User) -> None:
    names = [f"SECRET_{number}" for number in range(MAX_SECRETS + 1)]
    with pytest.raises(LaunchError) as refused:
        check_launch(name="many", program="scripted", params={}, secrets=names, owner=owner)
    assert refused.value.errors == {"secrets": f"at most {MAX_SECRETS} secrets"}


@pytest.mark.django_db
def test_a_second_cancel_of_a_running_run_keeps_it_cancelling(owner: User) -> None:
    run = a_run(owner, RunStatus.RUNNING, attempt=1)
    assert do_cancel_run(run, actor=owner).status == RunStatus.CANCELLING
    again = do_cancel_run(Run.objects.get(pk=run.pk), actor=owner)
    assert again.status == RunStatus.CANCELLING


@pytest.mark.django_db
def test_cancelling_a_finished_run_is_refused_and_names_its_status(owner: User) -> None:
    run = a_run(owner, RunStatus.SUCCEEDED, attempt=1)
    with pytest.raises(CancelError, match=f"run {run.pk} is already succeeded"):
        do_cancel_run(run, actor=owner)
    assert Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED


@pytest.mark.django_db
def test_retrying_a_run_that_is_still_queued_is_refused(owner: User) -> None:
    run = a_run(owner)
    with pytest.raises(RetryError, match="only failed, cancelled or dead runs can be retried"):
        do_retry_run(run, actor=owner)


@pytest.mark.django_db
def test_only_a_dead_run_can_be_requeued_or_discarded_and_only_once(owner: User) -> None:
    alive = a_run(owner, RunStatus.FAILED, attempt=3)
    with pytest.raises(DeadLetterError, match="is not dead-lettered"):
        do_requeue_dead_run(alive, actor=owner)
    with pytest.raises(DeadLetterError, match="is not an open dead letter"):
        do_discard_dead_run(alive, actor=owner)
    dead = a_run(owner, RunStatus.DEAD, attempt=3)
    assert do_discard_dead_run(dead, actor=owner).discarded_at is not None
    with pytest.raises(DeadLetterError, match="is not an open dead letter"):
        do_discard_dead_run(dead, actor=owner)


ENQUEUE = (
    "import sys, django; django.setup(); from runs.services import enqueue_run; "
    "enqueue_run(int(sys.argv[1]), 'test-services-edges', 'req-1'); print('returned')"
)


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_is_down_leaves_the_run_queued_for_the_reconciler(owner: User, tmp_path: Path) -> None:
    run = a_run(owner)
    db = settings.DATABASES["default"]
    env = process_env(
        tmp_path,
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        # Nothing listens there: the broker is down.
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        SECRET_KEY=settings.SECRET_KEY,
    )
    result = subprocess.run(
        [sys.executable, "-c", ENQUEUE, str(run.pk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The request that launched it would still get its 201: the error is logged, not raised.
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("returned")
    assert '"event": "run_enqueue_failed"' in result.stdout + result.stderr
    run.refresh_from_db()
    assert (run.status, run.enqueued_at, run.dispatch_count) == (RunStatus.QUEUED, None, 0)
