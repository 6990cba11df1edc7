"""Multi-node runs (`"resources": {"nodes": 2}`) through two real Celery workers as two hosts
would run them: each with its own data and runs directories, nothing shared but Postgres and the
broker, torchrun's static rendezvous over loopback (gloo). The scheduler places both nodes or
none; node 0's worker claims the run and publishes the rendezvous; node 1's joins that attempt.
A tinygpt DDP run ends with each step reported once, its checkpoints and its model; a node that
dies ends the whole attempt (node_lost) and no rank of either node outlives it."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from fleet.models import GangNode, Reservation, Worker
from runs.models import Artifact, Checkpoint, MetricPoint, Run, RunAttempt, RunStatus
from runs.services import check_launch, do_launch_run
from tests.conftest import (
    ROOT,
    _stop,
    celery_worker_command,
    free_port,
    make_user,
    process_alive,
    stack_env,
    wait_for,
)
from tests.e2e.test_distributed import finished, log_lines  # the same waits as one-node torchrun runs
from tests.storage.s3server import MotoServer, aws_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]
RANK_LINE = re.compile(r"^rank (\d)/(\d) pid (\d+) session (\d+)$")


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    runs_dir: Path
    command: list[str]
    env: dict[str, str]
    log: Path

    def restart(self) -> None:
        """The same worker (name, queue, directories) started again, as a host comes back."""
        before = self.log.read_bytes().count(b"ready.")
        output = self.log.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
        )
        wait_for(lambda: self.log.read_bytes().count(b"ready.") > before, 90, message=f"{self.name} back")


@dataclass
class Pair:
    pool: str
    nodes: dict[str, Node]


def start_node(pool: str, name: str, root: Path, **extra: str) -> Node:
    queue = f"{pool}-{name}"
    env = stack_env(root / "data")
    env.update(
        CONTROLPLANE_DATA_DIR=str(root / "data"),
        CONTROLPLANE_RUNS_DIR=str(root / "runs"),
        CONTROLPLANE_DEFAULT_QUEUE=queue,
        CONTROLPLANE_READY_QUEUES=queue,
        CONTROLPLANE_WORKER_POOL=pool,
        CONTROLPLANE_WORKER_SLOTS="1",
        CONTROLPLANE_WORKER_ADDRESS="127.0.0.1",
        CONTROLPLANE_LEASE_SECONDS="12",
        CONTROLPLANE_CANCEL_GRACE_SECONDS="3",
        CONTROLPLANE_GANG_EXIT_WAIT_SECONDS="20",
        CONTROLPLANE_RETRY_BASE_SECONDS="0",
        **extra,
    )
    root.mkdir(parents=True, exist_ok=True)
    log = root / "worker.log"
    command = celery_worker_command(queue, f"{queue}@%h")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_for(lambda: b"ready." in log.read_bytes(), 90, message=f"worker {name}")
    return Node(f"{queue}@", process, root / "runs", command, env, log)


@pytest.fixture(scope="module")
def pair(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    pool = f"gang{free_port()}"  # a pool of its own: other suites' workers share the fleet tables
    nodes = {name: start_node(pool, name, tmp_path_factory.mktemp(f"host-{name}")) for name in ("a", "b")}
    try:
        yield Pair(pool, nodes)
    finally:
        for node in nodes.values():
            _stop(node.process)


@pytest.fixture
def owner(pair: Pair, transactional_db: Any) -> User:
    return make_user("gus", "operator")


@pytest.fixture
def bucket_pair(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Two hosts whose checkpoints and artifacts live in one S3 bucket (moto), nothing else shared."""
    root = tmp_path_factory.mktemp("bucket-pair")
    server = MotoServer(root / "moto.log")
    server.client().create_bucket(Bucket="gang")
    extra = {"CONTROLPLANE_STORAGE_URL": "s3://gang/cp", **aws_env(server.url)}
    pool = f"gangs3{free_port()}"
    nodes: dict[str, Node] = {}
    try:
        for name in ("a", "b"):
            nodes[name] = start_node(pool, name, root / name, **extra)
        yield Pair(pool, nodes)
    finally:
        for node in nodes.values():
            _stop(node.process)
        server.stop()


def launch(owner: User, pair: Pair, program: str, params: dict[str, Any]) -> Run:
    """Launch a two-node run once both workers are registered (a transactional test empties the
    tables; each worker's next heartbeat registers it anew)."""
    wait_for(lambda: Worker.objects.filter(pool=pair.pool).count() == 2, 30, message="both workers")
    request = check_launch(
        name=program,
        program=program,
        params=params,
        owner=owner,
        fleet={"resources": {"pool": pair.pool, "nodes": 2}},
    )
    return do_launch_run(owner, request)


def test_a_two_node_tinygpt_run_trains_across_both_workers_and_reports_once(owner: User, pair: Pair) -> None:
    run = launch(owner, pair, "tinygpt-nodes", {})
    ranks = dict(Reservation.objects.filter(run=run).values_list("node_rank", "device__worker__name"))
    assert sorted(ranks) == [0, 1] and len(set(ranks.values())) == 2  # one node on each worker
    run = finished(run, 300)
    lines = log_lines(run)
    assert run.status == RunStatus.SUCCEEDED, "\n".join(lines[-60:])
    # Each node's supervisor started its part of one torchrun job: the static rendezvous that
    # node 0 published, every rank of the world of two.
    starts = [line for line in lines if "torch.distributed.run" in line]
    assert len(starts) == 2, starts
    assert any("--node-rank=0" in line for line in starts) and any("--node-rank=1" in line for line in starts)
    assert all("--nnodes=2" in line and "--master-addr=127.0.0.1" in line for line in starts)
    assert any(line.startswith("[rank 0/2] tinygpt: device=cpu") for line in lines)
    assert any(line.startswith("[rank 1/2] tinygpt: device=cpu") for line in lines)  # node 1's rank
    # Reported by global rank 0 only: each step once, whichever node's ranks trained it.
    points = MetricPoint.objects.filter(series__run=run)
    train = list(points.filter(series__key="train/loss").order_by("step").values_list("step", flat=True))
    assert train == list(range(1, 13))
    val = dict(points.filter(series__key="val/loss").values_list("step", "value"))
    assert sorted(val) == [6, 12] and all(value is not None and 2.0 < value < 6.0 for value in val.values())
    assert sorted(Checkpoint.objects.filter(run=run).values_list("step", flat=True)) == [6, 12]
    assert Artifact.objects.get(run=run).name == "model.safetensors"
    nodes = {row.node_rank: row for row in GangNode.objects.filter(run=run, attempt=1)}
    assert sorted(nodes) == [0, 1] and nodes[0].endpoint.startswith("127.0.0.1:") and nodes[1].exit_code == 0
    # Only node 0's host has the checkpoints and the model: node 1 trained, rank 0 wrote.
    node0 = next(n for n in pair.nodes.values() if ranks[0].startswith(n.name))
    node1 = next(n for n in pair.nodes.values() if ranks[1].startswith(n.name))
    assert (node0.runs_dir / str(run.pk) / "checkpoints").is_dir()
    assert (node1.runs_dir / str(run.pk)).is_dir() and not (
        node1.runs_dir / str(run.pk) / "checkpoints"
    ).exists()
    assert not Reservation.objects.filter(run=run).exists()  # the gang's devices are free again


def test_a_dead_node_ends_the_whole_attempt_and_every_rank_of_both_nodes(owner: User, pair: Pair) -> None:
    run = launch(owner, pair, "ranks", {"nproc_per_node": 1, "ignore_sigterm": True})

    def both() -> dict[int, int] | None:
        found = {int(m[1]): int(m[3]) for line in log_lines(run) if (m := RANK_LINE.match(line))}
        return found if len(found) == 2 else None

    pids: dict[int, int] = wait_for(both, 180, interval=0.5, message="a rank on each node")
    ranks = dict(Reservation.objects.filter(run=run).values_list("node_rank", "device__worker__name"))
    node1 = next(n for n in pair.nodes.values() if ranks[1].startswith(n.name))
    node1.process.send_signal(signal.SIGKILL)
    node1.process.wait(timeout=30)
    # Node 0 sees node 1's heartbeat stop (lease 12 s), ends its own ranks and records the
    # attempt as an infrastructure failure of the gang; node 1's guardian ended its rank.
    attempt: RunAttempt = wait_for(
        lambda: RunAttempt.objects.filter(run=run, number=1).exclude(finished_at=None).first(),
        90,
        interval=0.5,
        message="the attempt to end",
    )
    assert (attempt.error_kind, attempt.error_code) == ("infrastructure", "node_lost"), attempt.error_message
    assert "node 1" in attempt.error_message and "was lost" in attempt.error_message
    wait_for(lambda: not any(process_alive(pid) for pid in pids.values()), 30, message="every rank to end")
    run.refresh_from_db()
    assert run.status in {RunStatus.QUEUED, RunStatus.FAILED}  # retried as a whole, or failed
    assert not Reservation.objects.filter(run=run, device__worker__name=ranks[0]).exists()


RESUMED = {"steps": 500, "checkpoint_every": 100, "eval_every": 250}


def test_a_gang_whose_node_died_resumes_on_both_nodes_from_the_bucket_and_ends_byte_identical(
    owner: User, bucket_pair: Pair
) -> None:
    reference = finished(launch(owner, bucket_pair, "tinygpt-nodes", RESUMED), 300)
    assert reference.status == RunStatus.SUCCEEDED, "\n".join(log_lines(reference)[-60:])
    run = launch(owner, bucket_pair, "tinygpt-nodes", RESUMED)
    wait_for(
        lambda: Checkpoint.objects.filter(run=run, step=200).exists(), 240, message="the step-200 checkpoint"
    )
    ranks = dict(Reservation.objects.filter(run=run).values_list("node_rank", "device__worker__name"))
    node1 = next(n for n in bucket_pair.nodes.values() if ranks[1].startswith(n.name))
    node1.process.send_signal(signal.SIGKILL)
    node1.process.wait(timeout=30)
    wait_for(
        lambda: RunAttempt.objects.filter(run=run, number=1).exclude(finished_at=None).exists(),
        90,
        message="node_lost",
    )
    node1.restart()  # the host comes back: the gang is placed again, both nodes resume
    run = finished(run, 300)
    assert run.status == RunStatus.SUCCEEDED, "\n".join(log_lines(run)[-60:])
    first, second = RunAttempt.objects.filter(run=run).order_by("number")[:2]
    assert (
        first.error_code == "node_lost"
        and second.resumed_from_step is not None
        and second.resumed_from_step >= 200
    )
    lines = log_lines(run)
    # Both nodes read the checkpoint from the bucket (each host its own runs directory).
    assert sum("resuming from the checkpoint of step" in line for line in lines) == 2
    model = Artifact.objects.get(run=run, name="model.safetensors")
    assert model.sha256 == Artifact.objects.get(run=reference, name="model.safetensors").sha256
