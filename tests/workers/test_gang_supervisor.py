"""A gang's node in the supervisor, in-process against the real database (the two-worker runs are
tests/e2e/test_multinode.py): a node other than 0 never trains from scratch beside a resumed node
0, gives up waiting when its worker shuts down or its message is stale, and node 0 learns how
the other nodes ended; the lease keeper reports a lost attempt."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from django.contrib.auth.models import User

from fleet import gang
from fleet.admission import NodeSeat, Seat
from fleet.models import Quota
from fleet.scheduler import schedule_pass
from runs import attempts
from runs.attempts import Claim, StaleAttempt
from runs.models import Checkpoint, ErrorKind, Run
from runs.storage import StorageUnavailable
from tests.conftest import make_user
from tests.fleet.helpers import gpu_worker, waiting_run
from workers import supervisor as supervisor_module
from workers.gang import others_failed, wait_to_join
from workers.launch import GangPart
from workers.lease_keeper import lease_kept
from workers.supervisor import Supervisor
from workers.writer import AttemptWriter

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner() -> User:
    user = make_user("gale", "operator")
    Quota.objects.create(user=user, max_gpus=100)
    return user


def gang_run(owner: User) -> tuple[Run, Seat, Seat]:
    """A 2-node run placed on workers "n0" and "n1"; (run, node 0's seat, node 1's seat)."""
    gpu_worker("n0", 1)
    gpu_worker("n1", 1)
    run = waiting_run(owner, gpus=1, nodes=2)
    schedule_pass()
    seats = [Seat("n0"), Seat("n1")]
    first = next(seat for seat in seats if seat.node(run.pk) == NodeSeat(0, 2))
    other = next(seat for seat in seats if seat is not first)
    return run, first, other


def node_supervisor(claim: Claim, rank: int, settings: Any) -> Supervisor:
    supervisor = Supervisor(claim.run_id)
    supervisor._gang = GangPart(rank, 2, "127.0.0.1", 29500, 5)
    supervisor._writer = AttemptWriter(
        claim.run_id, claim.attempt, settings.CONTROLPLANE, structlog.get_logger("tests"), on_fenced_off=print
    )
    return supervisor


def second_attempt(owner: User) -> Claim:
    """A run on its second attempt with a checkpoint this host does not have (another host's)."""
    run = Run.objects.create(name="gang", owner=owner, program="scripted", queue="gang-tests")
    claim = attempts.claim_run(run.pk, "n0")
    assert claim is not None
    Checkpoint.objects.create(
        run=run, attempt=1, step=10, path="checkpoints/step-10.pt", size=3, sha256="0" * 64
    )
    return claim


def test_a_node_that_cannot_read_the_checkpoint_fails_the_attempt_instead_of_training_from_scratch(
    owner: User, tmp_path: Path, settings: Any
) -> None:
    claim = second_attempt(owner)
    outcome = node_supervisor(claim, 1, settings)._resume_point(claim, tmp_path)
    assert isinstance(outcome, attempts.Outcome)
    assert (outcome.error_kind, outcome.error_code) == (ErrorKind.CONFIG, "checkpoints_not_shared")
    assert "CONTROLPLANE_STORAGE_URL" in outcome.error_message
    # Node 0 starts from scratch when nothing is readable: it is the one that writes checkpoints.
    assert node_supervisor(claim, 0, settings)._resume_point(claim, tmp_path) is None


def test_a_store_that_is_down_ends_the_attempt_as_infrastructure(
    owner: User, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = second_attempt(owner)

    def down(*args: Any) -> str | None:
        raise StorageUnavailable("the bucket answers nothing")

    monkeypatch.setattr(supervisor_module, "choose_checkpoint", down)
    outcome = node_supervisor(claim, 0, settings)._resume_point(claim, tmp_path)
    assert isinstance(outcome, attempts.Outcome)
    assert (outcome.error_kind, outcome.error_code) == (ErrorKind.INFRASTRUCTURE, "storage_unavailable")


def test_a_node_stops_waiting_to_join_on_shutdown_on_a_stale_message_and_when_its_node_is_taken(
    owner: User,
) -> None:
    run, first, other = gang_run(owner)
    stopping = Supervisor(run.pk, seat=other)
    stopping.request_shutdown()
    assert stopping.run() == "not_claimed"  # the worker shuts down: it joins nothing
    node = other.node(run.pk)
    assert node is not None
    claim = attempts.claim_run(run.pk, first.worker_name, admitted=first.admits)
    assert claim is not None
    gang.publish(run.pk, claim.attempt, first.worker_name, "127.0.0.1:29500")
    assert gang.join(run.pk, claim.attempt, 1, "someone-else")
    assert wait_to_join(run.pk, other, node, threading.Event()) is None  # another supervisor has it
    assert wait_to_join(run.pk, other, NodeSeat(1, 3), threading.Event()) is None  # not this node any more


def test_node_0_learns_how_the_other_nodes_ended(owner: User, settings: Any) -> None:
    run, first, _ = gang_run(owner)
    claim = attempts.claim_run(run.pk, first.worker_name, admitted=first.admits)
    assert claim is not None
    part = GangPart(0, 2, "127.0.0.1", 29500, 5)
    settings.GANG = {**settings.GANG, "EXIT_WAIT_SECONDS": 0}
    assert others_failed(claim, part) == "node 1 did not report its end within 0 s"
    assert gang.join(run.pk, claim.attempt, 1, "n1")
    gang.report_exit(run.pk, claim.attempt, 1, 0)
    assert others_failed(claim, part) is None
    gang.report_exit(run.pk, claim.attempt, 1, 7)
    assert others_failed(claim, part) == "node 1 exited with code 7"


def test_the_lease_keeper_reports_an_attempt_that_is_gone() -> None:
    def renew() -> None:
        raise StaleAttempt("another attempt owns the run")

    with lease_kept(renew, 0.01, structlog.get_logger("tests")) as lost:
        deadline = time.monotonic() + 5
        while not lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert lost.is_set()
