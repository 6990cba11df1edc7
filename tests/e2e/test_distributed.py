"""`launcher = "torchrun"` through a real Celery worker (a pool of its own) and real Postgres:
a two-process gloo tinygpt run reports each step once (rank 0), registers its checkpoints and its
model; every rank's log lines reach the run; a cancel and the worker's death end every rank,
even ranks that ignore SIGTERM, which torchrun starts in sessions of their own."""

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

from runs.models import Artifact, Checkpoint, LogLine, MetricPoint, Run, RunStatus
from runs.services import check_launch, do_cancel_run, do_launch_run
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

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
POOL = "distributed"
TERMINAL = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD}
RANK_LINE = re.compile(r"^rank (\d)/2 pid (\d+) session (\d+)$")


@dataclass
class Stack:
    worker: subprocess.Popen[bytes]
    logs: Path


@pytest.fixture(scope="module")
def stack(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("distributed-data")
    logs = tmp_path_factory.mktemp("distributed-logs")
    queue = f"distributed-{free_port()}"
    env = stack_env(data_dir)
    # A pool of its own: other suites' live workers share the test database's fleet.
    env.update(
        CONTROLPLANE_DEFAULT_QUEUE=queue,
        CONTROLPLANE_READY_QUEUES=queue,
        CONTROLPLANE_WORKER_POOL=POOL,
        CONTROLPLANE_CANCEL_GRACE_SECONDS="3",
    )
    worker = subprocess.Popen(
        celery_worker_command(queue, f"{queue}@%h"),
        cwd=ROOT,
        env=env,
        stdout=(logs / "worker.out").open("wb"),
        stderr=(logs / "worker.log").open("wb"),
    )
    try:
        wait_for(lambda: b"ready." in (logs / "worker.log").read_bytes(), 90, message="the worker")
        yield Stack(worker, logs)
    finally:
        _stop(worker)


@pytest.fixture
def owner(stack: Stack, transactional_db: Any) -> User:
    return make_user("dora", "operator")


def launch(owner: User, program: str, params: dict[str, Any]) -> Run:
    """Launch into the stack's pool once its worker is registered (a transactional test empties
    the tables; the worker's next heartbeat registers it anew)."""
    from fleet.models import Worker

    wait_for(lambda: Worker.objects.filter(pool=POOL).exists(), 30, message="the distributed worker")
    request = check_launch(
        name=program, program=program, params=params, owner=owner, fleet={"resources": {"pool": POOL}}
    )
    return do_launch_run(owner, request)


def finished(run: Run, timeout: float) -> Run:
    def done() -> Run | None:
        current = Run.objects.get(pk=run.pk)
        return current if current.status in TERMINAL else None

    result: Run = wait_for(done, timeout, interval=0.5, message=f"run {run.pk} to end")
    return result


def log_lines(run: Run) -> list[str]:
    return list(LogLine.objects.filter(run=run).order_by("seq").values_list("line", flat=True))


def rank_pids(run: Run) -> dict[int, int] | None:
    """{rank: pid} once both ranks said who they are."""
    found = {int(m[1]): int(m[2]) for line in log_lines(run) if (m := RANK_LINE.match(line))}
    return found if len(found) == 2 else None


def both_ranks(run: Run) -> dict[int, int]:
    try:
        pids: dict[int, int] = wait_for(lambda: rank_pids(run), 180, interval=0.5, message="both ranks")
    except AssertionError as error:
        current = Run.objects.get(pk=run.pk)
        tree = subprocess.run(["ps", "-eo", "pid,ppid,pgid,stat,etime,args"], capture_output=True, text=True)
        mine = [line for line in tree.stdout.splitlines() if "ranks_program" in line or "guardian" in line]
        raise AssertionError(
            f"{error}: {current.status}, log {log_lines(run)[-20:]}, processes {mine}"
        ) from None
    return pids


def test_a_two_process_tinygpt_run_reports_each_step_once_with_its_checkpoints_and_model(owner: User) -> None:
    run = finished(launch(owner, "tinygpt-ddp", {}), 300)
    lines = log_lines(run)
    assert run.status == RunStatus.SUCCEEDED, lines[-30:]
    # Reported by rank 0 (tests/programs/test_tinygpt_ddp.py counts the events: once per step).
    points = MetricPoint.objects.filter(series__run=run)
    train = list(points.filter(series__key="train/loss").order_by("step").values_list("step", flat=True))
    assert train == list(range(1, 13))
    val = dict(points.filter(series__key="val/loss").values_list("step", "value"))
    assert sorted(val) == [6, 12] and all(value is not None and 2.0 < value < 6.0 for value in val.values())
    assert sorted(Checkpoint.objects.filter(run=run).values_list("step", flat=True)) == [6, 12]
    model = Artifact.objects.get(run=run)
    assert model.name == "model.safetensors" and model.size > 1000
    # Every rank's stdout reaches the run's log.
    assert any(line.startswith("[rank 0/2] tinygpt: device=cpu") for line in lines)
    assert any(line.startswith("[rank 1/2] tinygpt: device=cpu") for line in lines)
    assert any("torch.distributed.run" in line and "--nproc-per-node=2" in line for line in lines)


def test_both_ranks_report_at_once_and_a_cancel_ends_every_rank_even_ranks_that_ignore_sigterm(
    owner: User,
) -> None:
    run = launch(owner, "ranks", {"ignore_sigterm": True, "points": 3000})
    pids = both_ranks(run)
    assert all(process_alive(pid) for pid in pids.values())
    wait_for(lambda: Run.objects.get(pk=run.pk).progress_step == 1, 60, message="rank 0's report")
    # Two writers on the socket at once (each rank its own connection): every point of each.
    points = MetricPoint.objects.filter(series__run=run)
    wait_for(lambda: points.filter(series__key__startswith="rank").count() == 6000, 60, message="both series")
    for rank in (0, 1):
        steps = points.filter(series__key=f"rank{rank}/value").order_by("step").values_list("step", "value")
        assert list(steps) == [(step, float(step)) for step in range(3000)]
    do_cancel_run(Run.objects.get(pk=run.pk), actor=owner)
    ended = finished(run, 60)
    assert ended.status == RunStatus.CANCELLED
    # Neither rank survives: torchrun started each in a session of its own, out of reach of the
    # group's signals; the supervisor's SIGKILL (after the 3 s grace) goes to the whole tree.
    wait_for(lambda: not any(process_alive(pid) for pid in pids.values()), 10, message="every rank to end")


def test_the_worker_s_death_ends_every_rank(owner: User, stack: Stack) -> None:
    run = launch(owner, "ranks", {"ignore_sigterm": True})
    pids = both_ranks(run)
    stack.worker.send_signal(signal.SIGKILL)
    stack.worker.wait(timeout=30)
    # The guardian reads end-of-file on its lifeline and ends its tree: SIGTERM, 5 s, SIGKILL.
    wait_for(lambda: not any(process_alive(pid) for pid in pids.values()), 30, message="every rank to end")
