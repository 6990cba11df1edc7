"""fleet.scheduler: admission in Postgres — placement, reservations, reasons, release, order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import Quota, Reservation, Worker
from fleet.scheduler import schedule_pass
from runs import lifecycle
from runs.lifecycle import Trigger
from runs.models import Run, RunStatus
from tests.conftest import make_user
from tests.fleet.helpers import cpu_worker, gpu_worker, waiting_run

pytestmark = pytest.mark.django_db


def devices_of(run: Run) -> list[tuple[str, int]]:
    return sorted(Reservation.objects.filter(run=run).values_list("device__worker__name", "device__index"))


def test_a_pass_reserves_best_fit_devices_and_points_the_run_at_the_workers_queue() -> None:
    owner = make_user("alice")
    gpu_worker("big", 4)
    small = gpu_worker("small", 2)
    run = waiting_run(owner, gpus=2)
    report = schedule_pass()
    assert report.placed == [run.pk]
    run.refresh_from_db()
    assert devices_of(run) == [("small", 0), ("small", 1)]  # best fit: nothing left over
    assert run.queue == small.queue and run.waiting_reason == ""
    assert schedule_pass().placed == []  # admitted once


def test_runs_go_by_priority_then_age_and_the_head_holds_its_pool() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("w", 2)
    old_small = waiting_run(owner, gpus=1, created_at=timezone.now() - timedelta(seconds=30))
    urgent_big = waiting_run(owner, gpus=2, priority=90)
    newer_small = waiting_run(owner, gpus=1)
    assert schedule_pass().placed == [urgent_big.pk]
    # The two small ones wait behind nothing now but the devices are taken.
    assert schedule_pass().placed == []
    lifecycle.perform(urgent_big.pk, Trigger.CANCEL_QUEUED)  # frees its devices (the listener)
    assert Reservation.objects.filter(run=urgent_big).count() == 0
    assert schedule_pass().placed == [old_small.pk, newer_small.pk]


def test_a_big_head_is_not_starved_by_small_runs_behind_it() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("w", 2)
    first = waiting_run(owner, gpus=1)
    schedule_pass()
    big = waiting_run(owner, gpus=2, created_at=timezone.now() - timedelta(seconds=5))
    small = waiting_run(owner, gpus=1)
    # One GPU is free, but the 2-GPU head of the pool holds it back from the small run behind.
    assert schedule_pass().placed == []
    lifecycle.perform(first.pk, Trigger.CANCEL_QUEUED)
    assert schedule_pass().placed == [big.pk]
    assert small.pk not in schedule_pass().placed


def test_a_big_head_keeps_one_worker_and_the_pools_other_workers_keep_taking_runs() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("w1", 4)
    gpu_worker("w2", 4)
    three = waiting_run(owner, gpus=3)
    schedule_pass()
    two = waiting_run(owner, gpus=2)
    schedule_pass()
    assert {name for name, _ in devices_of(three)} == {"w1"}  # w1: 1 free
    assert {name for name, _ in devices_of(two)} == {"w2"}  # w2: 2 free
    big = waiting_run(owner, gpus=4, created_at=timezone.now() - timedelta(seconds=5))
    first, second = waiting_run(owner, gpus=1), waiting_run(owner, gpus=1)
    # The head keeps w2 (the most free devices); w1's free device goes to the run behind it,
    # and nothing is placed on w2 although it has room for the second small run.
    assert schedule_pass().placed == [first.pk]
    assert devices_of(first) == [("w1", 3)]
    lifecycle.perform(two.pk, Trigger.CANCEL_QUEUED)  # w2 is whole again
    assert schedule_pass().placed == [big.pk]
    assert {name for name, _ in devices_of(big)} == {"w2"}
    assert Reservation.objects.filter(run=second).count() == 0


def test_aging_lifts_a_long_waiting_run_above_newer_higher_priority_ones() -> None:
    owner = make_user("alice")
    gpu_worker("w", 1)
    aged = waiting_run(owner, priority=10, created_at=timezone.now() - timedelta(hours=3))
    waiting_run(owner, priority=20)
    # 180 minutes / 10 = +18: 28 beats 20.
    assert schedule_pass().placed == [aged.pk]


def test_waiting_reasons_say_why_in_words() -> None:
    alice, bob = make_user("alice"), make_user("bob")
    Quota.objects.create(user=bob, max_gpus=1)
    gpu_worker("w", 4)
    nowhere = waiting_run(alice, pool="h100")
    too_big = waiting_run(alice, gpus=8)
    bobs_first = waiting_run(bob, gpus=1)
    bobs_second = waiting_run(bob, gpus=1)
    schedule_pass()
    reasons = dict(Run.objects.values_list("pk", "waiting_reason"))
    assert reasons[nowhere.pk] == "no live worker in pool h100"
    assert reasons[too_big.pk] == "needs 8 GPUs; the largest a100 worker has 4"
    assert reasons[bobs_first.pk] == ""
    assert reasons[bobs_second.pk] == "quota: bob uses 1 of 1 GPUs"


def test_lost_and_draining_workers_get_no_new_runs() -> None:
    owner = make_user("alice")
    lost = gpu_worker("lost", 1)
    Worker.objects.filter(pk=lost.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    draining = gpu_worker("draining", 1)
    Worker.objects.filter(pk=draining.pk).update(state="draining")
    run = waiting_run(owner)
    assert schedule_pass().placed == []
    run.refresh_from_db()
    assert run.waiting_reason == "every live worker in pool a100 is draining"


def test_an_admitted_run_whose_worker_is_lost_before_the_claim_is_placed_again() -> None:
    owner = make_user("alice")
    first = gpu_worker("first", 1)
    run = waiting_run(owner)
    schedule_pass()
    Worker.objects.filter(pk=first.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    gpu_worker("second", 1)
    assert schedule_pass().placed == [run.pk]
    assert devices_of(run) == [("second", 0)]


def test_a_run_that_ends_frees_its_devices_in_the_same_transaction() -> None:
    owner = make_user("alice")
    worker = cpu_worker("cpu", pool="ends-test")
    run = waiting_run(owner, pool="ends-test", gpus=0)
    schedule_pass()
    run.refresh_from_db()
    assert run.queue == worker.queue
    from fleet.admission import Seat
    from runs.attempts import Outcome, claim_run, finish_attempt

    claim = claim_run(run.pk, "cpu", admitted=Seat("cpu").admits)
    assert claim is not None
    assert Seat("cpu").gpus(run.pk) == ()
    finish_attempt(run.pk, claim.attempt, Outcome(RunStatus.SUCCEEDED, 0))
    assert Reservation.objects.count() == 0


def test_a_stale_message_on_another_worker_starts_nothing() -> None:
    from fleet.admission import Seat
    from runs.attempts import claim_run

    owner = make_user("alice")
    gpu_worker("here", 1)
    gpu_worker("there", 2)
    run = waiting_run(owner, gpus=2)
    schedule_pass()
    assert claim_run(run.pk, "here", admitted=Seat("here").admits) is None
    waiting = waiting_run(owner, gpus=2, pool="nowhere")
    assert claim_run(waiting.pk, "there", admitted=Seat("there").admits) is None  # not admitted
    assert Seat("there").gpus(run.pk) == (0, 1)
    assert claim_run(run.pk, "there", admitted=Seat("there").admits) is not None


def test_a_dead_workers_runs_resume_on_another_worker_of_the_pool() -> None:
    from fleet.admission import Seat
    from runs.attempts import claim_run
    from runs.reconciler import reconcile

    owner = make_user("alice")
    dying = gpu_worker("dying", 2)
    run = waiting_run(owner, gpus=2)
    schedule_pass()
    assert claim_run(run.pk, "dying", admitted=Seat("dying").admits) is not None
    gpu_worker("spare", 2)
    # The worker dies: no heartbeat, and its run's lease runs out.
    later = timezone.now() + timedelta(minutes=5)
    Worker.objects.filter(pk=dying.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    reconcile(later)  # the lease expiry queues the run again (after a backoff) and frees its devices
    assert Reservation.objects.filter(run=run).count() == 0
    Run.objects.filter(pk=run.pk).update(not_before=None)  # the retry backoff has passed
    assert schedule_pass().placed == [run.pk]
    assert devices_of(run) == [("spare", 0), ("spare", 1)]


def test_declared_gpus_nvml_does_not_see_are_refused_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from fleet import inventory

    memory = SimpleNamespace(total=16 * 2**30)
    nvml = SimpleNamespace(
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: b"Fake T4",
        nvmlDeviceGetMemoryInfo=lambda handle: memory,
    )
    monkeypatch.setattr(inventory, "load_nvml", lambda: nvml)
    offered = inventory.discover("0,1,5")
    assert [(d.index, d.kind, d.model, d.memory_bytes) for d in offered] == [
        (0, "gpu", "Fake T4", 16 * 2**30),
        (1, "gpu", "Fake T4", 16 * 2**30),
    ]
    assert [d.index for d in inventory.discover("auto")] == [0, 1]
    assert [d.kind for d in inventory.discover("", slots=3)] == ["slot"] * 3
