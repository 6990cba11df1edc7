"""Gangs (`resources.nodes` > 1, docs/distributed.md) in the scheduler: all nodes or none, each on
its own worker of the pool, node 0 the best fit; reasons, quotas and the launch check count every
node; the rows through which the nodes of one attempt join and watch each other (fleet.gang)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet import gang
from fleet.admission import NodeSeat, Seat
from fleet.models import Quota, Reservation
from fleet.scheduler import schedule_pass
from fleet.selectors import placements_of
from runs.attempts import claim_run, joined_claim
from runs.models import Run
from runs.placement_request import check_placement
from tests.conftest import make_user
from tests.fleet.helpers import cpu_worker, gpu_worker, waiting_run

pytestmark = pytest.mark.django_db


def nodes_of(run: Run) -> list[tuple[int, str, int]]:
    rows = Reservation.objects.filter(run=run).values_list(
        "node_rank", "device__worker__name", "device__index"
    )
    return sorted(rows)


def test_a_gang_is_placed_on_as_many_workers_as_it_has_nodes_best_fit_first() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("four", 4)
    two = gpu_worker("two", 2)
    gpu_worker("one", 1)
    run = waiting_run(owner, gpus=2, nodes=2)
    assert schedule_pass().placed == [run.pk]
    run.refresh_from_db()
    # Node 0 on the best fit (nothing left over), node 1 on the next; never two nodes on one worker.
    assert nodes_of(run) == [(0, "two", 0), (0, "two", 1), (1, "four", 0), (1, "four", 1)]
    assert run.queue == two.queue
    assert Seat("two").node(run.pk) == NodeSeat(0, 2)
    assert Seat("four").node(run.pk) == NodeSeat(1, 2)
    assert Seat("one").node(run.pk) is None
    assert Seat("four").gpus(run.pk) == (0, 1)
    node0, node1 = (
        {"worker": "two", "devices": [0, 1], "slots": 0},
        {"worker": "four", "devices": [0, 1], "slots": 0},
    )
    assert placements_of([run])[run.pk]["assigned"] == {**node0, "nodes": [node0, node1]}  # the run's JSON
    # Only node 0's worker claims the run; the other joins the attempt it opens.
    assert claim_run(run.pk, "four", admitted=Seat("four").admits) is None
    assert claim_run(run.pk, "two", admitted=Seat("two").admits) is not None


def test_a_gang_gets_all_its_nodes_or_none_and_keeps_workers_for_itself() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("w1", 2)
    gpu_worker("w2", 2)
    blocker = waiting_run(owner, gpus=2, priority=90)
    assert schedule_pass().placed == [blocker.pk]  # one worker is full now
    run = waiting_run(owner, gpus=2, nodes=2, priority=80)
    small = waiting_run(owner, gpus=1, priority=10)
    assert schedule_pass().placed == []  # not one node of the gang; and the small run waits too
    assert Reservation.objects.filter(run__in=[run, small]).count() == 0
    run.refresh_from_db()
    small.refresh_from_db()
    assert run.waiting_reason == ""  # its turn: it fits the pool, waiting for room
    Run.objects.filter(pk=blocker.pk).update(status="succeeded")
    assert schedule_pass().placed == [run.pk]
    assert {worker for _, worker, _ in nodes_of(run)} == {"w1", "w2"}


def test_reasons_and_quotas_count_every_node() -> None:
    alice, bob = make_user("alice"), make_user("bob")
    Quota.objects.create(user=alice, max_gpus=100)
    Quota.objects.create(user=bob, max_gpus=3)
    gpu_worker("w1", 2)
    gpu_worker("w2", 2)
    gpu_worker("w3", 4)
    cpu_worker("c1")
    too_many = waiting_run(alice, gpus=4, nodes=2)
    over_quota = waiting_run(bob, gpus=2, nodes=2)
    slots = waiting_run(alice, pool="default", gpus=0, nodes=2)
    schedule_pass()
    reasons = dict(Run.objects.values_list("pk", "waiting_reason"))
    assert reasons[too_many.pk] == "needs 2 workers with 4 GPUs each; pool a100 has 1"
    assert reasons[over_quota.pk] == "quota: bob uses 0 of 3 GPUs"
    assert reasons[slots.pk] == "needs 2 workers with a CPU slot each; pool default has 1"


def test_the_launch_check_names_resources_nodes() -> None:
    operator = make_user("olga", "operator")
    gpu_worker("w1", 4)
    gpu_worker("w2", 2)
    body = {"resources": {"pool": "a100", "gpus": 4, "nodes": 2}}
    _, errors = check_placement(body, operator)
    assert errors == {"resources.nodes": "needs 2 workers with 4 GPUs each; pool a100 has 1"}
    _, errors = check_placement({"resources": {"pool": "a100", "gpus": 2, "nodes": 0}}, operator)
    assert errors == {"resources.nodes": "must be between 1 and 64"}
    _, errors = check_placement({"resources": {"pool": "a100", "gpus": 2, "nodes": "2"}}, operator)
    assert errors == {"resources.nodes": "must be an integer"}
    _, errors = check_placement({"resources": {"pool": "a100", "gpus": 4, "nodes": 3}}, operator)
    assert errors == {"resources.nodes": "needs 12 GPUs; your quota is 8 GPUs at once"}
    request, errors = check_placement({"resources": {"pool": "a100", "gpus": 2, "nodes": 2}}, operator)
    assert errors == {} and request.resources == {"pool": "a100", "gpus": 2, "nodes": 2}
    request, _ = check_placement({"resources": {"pool": "a100", "gpus": 2, "nodes": 1}}, operator)
    assert request.resources == {"pool": "a100", "gpus": 2}  # one node: the plain shape


def test_nodes_join_the_attempt_node_0_opened_once_each_and_node_0_sees_who_is_lost() -> None:
    owner = make_user("alice")
    Quota.objects.create(user=owner, max_gpus=100)
    gpu_worker("w1", 1)
    gpu_worker("w2", 1)
    run = waiting_run(owner, gpus=1, nodes=2)
    schedule_pass()
    assert gang.rendezvous(run.pk) is None  # not claimed yet: node 1 waits
    first = Seat("w1") if Seat("w1").node(run.pk) == NodeSeat(0, 2) else Seat("w2")
    other = "w2" if first.worker_name == "w1" else "w1"
    claim = claim_run(run.pk, first.worker_name, admitted=first.admits)
    assert claim is not None
    assert gang.rendezvous(run.pk) is None  # claimed, endpoint not yet published
    gang.publish(run.pk, claim.attempt, first.worker_name, "10.0.0.1:29500")
    assert gang.rendezvous(run.pk) == (claim.attempt, "10.0.0.1:29500")
    started = timezone.now()
    assert gang.trouble(run.pk, claim.attempt, 2, started) is None  # still in time to join
    late = started + timedelta(seconds=301)
    assert gang.trouble(run.pk, claim.attempt, 2, started, late) == "node 1 did not join within 300 s"
    assert gang.join(run.pk, claim.attempt, 1, other)
    assert not gang.join(run.pk, claim.attempt, 1, other)  # a second delivery joins nothing
    assert joined_claim(run.pk, claim.attempt) == claim
    assert gang.trouble(run.pk, claim.attempt, 2, started) is None
    lost = timezone.now() + timedelta(seconds=120)
    assert str(gang.trouble(run.pk, claim.attempt, 2, started, lost)).startswith(f"node 1 ({other}) was lost")
    gang.report_exit(run.pk, claim.attempt, 1, 0)
    assert gang.trouble(run.pk, claim.attempt, 2, started, lost) is None  # ended well: not lost
    assert gang.exits(run.pk, claim.attempt) == {1: 0}
    gang.report_exit(run.pk, claim.attempt, 1, 3)
    assert gang.trouble(run.pk, claim.attempt, 2, started) == f"node 1 ({other}) exited with code 3"
    assert not gang.join(run.pk, claim.attempt + 1, 1, other)  # an attempt that is not the run's
