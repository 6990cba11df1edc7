"""The queue query (fleet.snapshot) orders and reads runs exactly as the documented rule says
(fleet.placement.order, requested): the database now does what Python did."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.placement import Candidate, order
from fleet.scheduler import requested
from fleet.snapshot import queue_chunks, waiting_runs
from runs.models import Run
from tests.conftest import make_user
from tests.fleet.helpers import waiting_run

pytestmark = pytest.mark.django_db

AGING_MINUTES = 10.0


def test_the_database_orders_the_queue_by_effective_priority_then_age_then_id() -> None:
    rng = random.Random(7)
    owner = make_user("alice")
    now = timezone.now()
    for _ in range(120):
        # Ages up to 30 hours: past the +100 cap of aging, and across whole aging steps.
        waiting_run(
            owner,
            priority=rng.choice((0, 10, 50, 50, 90, 100)),
            gpus=rng.choice((0, 1, 2)),
            created_at=now - timedelta(minutes=rng.choice((0, 5, 10, 95, 600, 1000, 1800))),
        )
    Run.objects.filter(pk__in=Run.objects.order_by("?").values("pk")[:30]).update(created_at=now)  # ties
    expected = order(
        [
            Candidate(pk, owner_id, "alice", *requested(resources), priority, created_at)
            for pk, owner_id, resources, priority, created_at in Run.objects.values_list(
                "pk", "owner_id", "resources", "priority", "created_at"
            )
        ],
        now,
        AGING_MINUTES,
    )
    got, reasons = waiting_runs(now, AGING_MINUTES)
    assert [run.run_id for run in got] == [run.run_id for run in expected]
    assert [(run.pool, run.gpus, run.priority, run.owner_name) for run in got] == [
        (run.pool, run.gpus, run.priority, "alice") for run in expected
    ]
    assert set(reasons) == {run.run_id for run in expected}
    # The pass reads the same order in chunks (keyset on ties of priority and age too).
    chunks = list(queue_chunks(now, AGING_MINUTES, {owner.pk: "alice"}, 7))
    assert [run for chunk, _ in chunks for run in chunk] == got
    assert len(chunks) == 18 and all(len(chunk) == 7 for chunk, _ in chunks[:-1])


def test_the_queue_query_reads_resources_as_the_one_run_rule_does() -> None:
    owner = make_user("alice")
    odd = [{}, {"pool": ""}, {"pool": "l4", "gpus": 2}, {"gpus": "3"}, {"gpus": 1.5}, {"gpus": None}]
    for resources in odd:
        Run.objects.create(name="r", owner=owner, program="scripted", queue="", resources=resources)
    got, _ = waiting_runs(timezone.now(), AGING_MINUTES)
    read = {run.run_id: (run.pool, run.gpus) for run in got}
    for pk, resources in Run.objects.values_list("pk", "resources"):
        assert read[pk] == requested(resources), resources


def test_runs_not_due_or_already_admitted_are_not_read() -> None:
    owner = make_user("alice")
    waiting_run(owner, not_before=timezone.now() + timedelta(minutes=5))  # not due yet
    admitted = waiting_run(owner)
    Run.objects.filter(pk=admitted.pk).update(queue="worker.w")
    due = waiting_run(owner)
    got, _ = waiting_runs(timezone.now(), AGING_MINUTES)
    assert [run.run_id for run in got] == [due.pk]
