"""The pass stops reading the queue once every pool is served (fleet.scheduler._plan_queue): the
unread tail gets the same waiting reasons, by one UPDATE (fleet.tail), as a full read gives it,
and a run deep in the queue that fits a pool with room is still placed."""

from __future__ import annotations

import random
from typing import Any

import pytest
from django.db import transaction

from fleet import scheduler, tail
from fleet.models import Quota, Reservation, Worker
from fleet.scheduler import schedule_pass
from runs.models import Run
from tests.conftest import make_user
from tests.fleet.helpers import cpu_worker, gpu_worker, waiting_run

pytestmark = pytest.mark.django_db


class Rollback(Exception):
    pass


def outcome() -> tuple[dict[int, str], list[tuple[int, str, int]]]:
    reasons = dict(Run.objects.values_list("pk", "waiting_reason"))
    reserved = sorted(Reservation.objects.values_list("run_id", "device__worker__name", "device__index"))
    return reasons, reserved


def tail_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows the tail UPDATE changed, one entry per call (none: the pass read the whole queue)."""
    calls: list[int] = []
    real = tail.store_tail_reasons

    def spy(*args: Any) -> int:
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(scheduler, "store_tail_reasons", spy)
    return calls


def a_pass_rolled_back() -> tuple[dict[int, str], list[tuple[int, str, int]]]:
    """What a pass leaves, then the database as it was before it."""
    seen: list[tuple[dict[int, str], list[tuple[int, str, int]]]] = []

    def run_then_roll_back() -> None:
        with transaction.atomic():
            schedule_pass()
            seen.append(outcome())
            raise Rollback

    with pytest.raises(Rollback):
        run_then_roll_back()
    return seen[0]


def a_busy_fleet_with_every_kind_of_reason() -> None:
    rng = random.Random(3)
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    Quota.objects.create(user=alice, max_gpus=100)
    Quota.objects.create(user=bob, max_gpus=100)
    Quota.objects.create(user=carol, max_gpus=2)  # quota reasons, in the read part and the tail
    gpu_worker("a1", 2)
    gpu_worker("a2", 4)
    cpu_worker("c1", slots=1)
    draining = gpu_worker("h1", 4, pool="h100")
    Worker.objects.filter(pk=draining.pk).update(state="draining")
    shapes = [("a100", 1), ("a100", 2), ("a100", 4), ("a100", 8), ("a100", 0), ("default", 0)]
    shapes += [("default", 1), ("h100", 1), ("l4", 2)]
    for _ in range(60):
        pool, gpus = rng.choice(shapes)
        waiting_run(rng.choice((alice, bob, carol)), pool=pool, gpus=gpus, priority=rng.randint(0, 100))
    # Gangs: one that fits (two a100 workers have 2 GPUs), one too big (one has 4), slots for 2.
    for pool, gpus in [("a100", 2), ("a100", 4), ("default", 0), ("a100", 1)] * 3:
        waiting_run(
            rng.choice((alice, bob, carol)), pool=pool, gpus=gpus, nodes=2, priority=rng.randint(0, 100)
        )
    # Reasons of an earlier pass that no longer hold: the tail's must be rewritten, not kept.
    Run.objects.update(waiting_reason="stale")


def test_the_unread_tail_gets_the_reasons_a_full_read_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    a_busy_fleet_with_every_kind_of_reason()
    monkeypatch.setattr(scheduler, "QUEUE_CHUNK", 1_000_000)
    full_read = a_pass_rolled_back()
    assert len(full_read[1]) > 0 and "stale" not in full_read[0].values()
    monkeypatch.setattr(scheduler, "QUEUE_CHUNK", 3)
    changed = tail_spy(monkeypatch)
    schedule_pass()
    assert len(changed) == 1 and changed[0] > 0  # it did stop early, and wrote the tail
    assert outcome() == full_read
    kinds = {reason.split(" ")[0] for reason in full_read[0].values()}
    assert kinds == {"", "every", "needs", "no", "quota:"}  # each kind of reason was compared


def test_a_steady_pass_on_a_full_fleet_writes_no_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    a_busy_fleet_with_every_kind_of_reason()
    monkeypatch.setattr(scheduler, "QUEUE_CHUNK", 3)
    changed = tail_spy(monkeypatch)
    schedule_pass()
    before = outcome()
    assert schedule_pass().placed == []
    assert changed[-1] == 0 and len(changed) == 2
    assert outcome() == before


def test_a_run_deep_in_the_queue_that_fits_a_pool_with_room_is_placed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = make_user("alice")
    Quota.objects.create(user=alice, max_gpus=100)
    gpu_worker("a1", 1)
    gpu_worker("l1", 1, pool="l4")
    for _ in range(20):
        waiting_run(alice, gpus=1, priority=90)  # the first fills a100, the second is its head
    last = waiting_run(alice, pool="l4", gpus=1, priority=0)
    monkeypatch.setattr(scheduler, "QUEUE_CHUNK", 2)
    changed = tail_spy(monkeypatch)
    placed = schedule_pass().placed
    assert last.pk in placed and len(placed) == 2
    assert changed == []  # l4 had room until its only run came: the whole queue was read


def test_a_full_pool_without_a_head_yet_is_read_on_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    alice = make_user("alice")
    Quota.objects.create(user=alice, max_gpus=100)
    gpu_worker("a1", 1)
    gpu_worker("l1", 1, pool="l4")
    waiting_run(alice, pool="l4", gpus=1, priority=100)
    for _ in range(10):
        waiting_run(alice, gpus=1, priority=90)
    deep_head = waiting_run(alice, pool="l4", gpus=1, priority=1)
    behind = [waiting_run(alice, pool="l4", gpus=1, priority=0) for _ in range(5)]
    monkeypatch.setattr(scheduler, "QUEUE_CHUNK", 2)
    read: list[list[int]] = []
    real = tail.store_tail_reasons

    def spy(now: Any, ids: list[int], *rest: Any) -> int:
        read.append(ids)
        return real(now, ids, *rest)

    monkeypatch.setattr(scheduler, "store_tail_reasons", spy)
    Run.objects.update(waiting_reason="stale")
    schedule_pass()
    # l4 is full from the first run on, but its head (the preemption target) is deep: read on to it.
    assert len(read) == 1 and deep_head.pk in read[0] and not {run.pk for run in behind} & set(read[0])
    reasons = dict(Run.objects.values_list("pk", "waiting_reason"))
    assert reasons[deep_head.pk] == "" and all(reasons[run.pk] == "" for run in behind)
