"""Backfill (fleet.placement): a run behind a blocked head may use the free devices of the worker
kept for that head when its declared limit ends it before the head could start there anyway (the
head's shadow time, from the limits of the runs holding the worker's devices). Never a run that
would outlast the shadow, or that declares no limit, or on a worker whose holders declare none."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from fleet.admission import Seat
from fleet.models import Quota, Reservation
from fleet.placement import Candidate, WorkerRoom
from fleet.scheduler import schedule_pass
from runs.attempts import claim_run
from runs.models import Run
from tests.conftest import make_user
from tests.fleet.helpers import gpu_worker, waiting_run

pytestmark = pytest.mark.django_db


def running(owner: User, gpus: int, limit: int | None) -> Run:
    """A run holding `gpus` devices of worker "w", claimed (started) now, with `limit` declared."""
    run = waiting_run(owner, gpus=gpus, priority=100, max_duration_seconds=limit)
    assert run.pk in schedule_pass().placed
    assert claim_run(run.pk, "w", admitted=Seat("w").admits) is not None
    return run


def held(run: Run) -> int:
    return Reservation.objects.filter(run=run).count()


def test_runs_that_end_before_the_heads_shadow_take_the_kept_workers_free_devices() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("w", 4)
    running(owner, 3, limit=600)  # 1 GPU free; the head can start in 600 s at the latest
    head = waiting_run(owner, gpus=4, priority=90)
    short = waiting_run(owner, gpus=1, priority=10, max_duration_seconds=300)
    schedule_pass()
    assert held(head) == 0 and held(short) == 1  # backfilled: it ends before the head could start
    Run.objects.filter(pk=short.pk).update(status="succeeded")
    Reservation.objects.filter(run=short).delete()
    too_long = waiting_run(owner, gpus=1, priority=20, max_duration_seconds=900)
    unknown = waiting_run(owner, gpus=1, priority=30)
    report = schedule_pass()
    assert report.placed == [] and held(too_long) == 0 and held(unknown) == 0  # would delay the head


def test_no_backfill_where_a_run_the_head_waits_for_declares_no_limit() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("w", 4)
    running(owner, 3, limit=None)  # when the head can start there is unknown
    waiting_run(owner, gpus=4, priority=90)
    short = waiting_run(owner, gpus=1, priority=10, max_duration_seconds=1)
    assert schedule_pass().placed == [] and held(short) == 0


def test_the_shadow_is_when_enough_devices_free_for_the_head() -> None:
    room = WorkerRoom(
        1,
        "w",
        "a100",
        "q",
        True,
        {"gpu": 8},
        {"gpu": [(1, 0)]},
        {"gpu": [30.0, 30.0, 10.0, None, 60.0, 5.0, 20.0]},
    )
    head = Candidate(1, 1, "alice", "a100", 4, 90, None)
    assert room.shadow(head) == 20.0  # 1 free + the devices freeing at 5, 10, 20 s
    assert room.shadow(head._replace(gpus=8)) is None  # needs the one without a limit
    assert room.shadow(head._replace(gpus=1)) == 0.0  # fits now
