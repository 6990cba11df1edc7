"""Preemption with resume: a low-priority tinygpt run on the only CPU slot is preempted for a
high-priority run (SIGTERM, final checkpoint, `preempted` → `queued` at its old place), the high
one runs, then the low one resumes from its checkpoint and ends with the same model.safetensors
sha256 as an uninterrupted run. Supervisors run in this process, as the task runs them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.admission import Seat
from fleet.models import Reservation
from fleet.placement import Candidate
from fleet.preemption import choose
from fleet.scheduler import schedule_pass
from runs.models import Artifact, Checkpoint, Run, RunStatus
from runs.programs import get_program, resolve_params
from tests.conftest import make_user, train_reference_tinygpt, wait_for
from tests.fleet.helpers import cpu_worker, gpu_worker, waiting_run
from workers.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)

TINY = {
    "steps": 600,
    "batch_size": 4,
    "seq_len": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "eval_every": 200,
    "checkpoint_every": 100,
    "warmup_steps": 10,
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def worker_settings(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.RUNS_DIR = tmp_path / "runs"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.CONTROLPLANE = {
        **settings.CONTROLPLANE,
        "HEARTBEAT_SECONDS": 0.2,
        "FLUSH_INTERVAL_SECONDS": 0.05,
        "LEASE_SECONDS": 30.0,
        "CANCEL_GRACE_SECONDS": 10.0,
    }
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the reference run: byte-identical weights


def reference_sha256(tmp_path: Path) -> str:
    program = get_program("tinygpt")
    assert program is not None
    run_dir = tmp_path / "reference"
    run_dir.mkdir()
    return train_reference_tinygpt(run_dir, resolve_params(program, TINY))


POOL = "preemption-test"


def supervise_in_thread(run_id: int) -> tuple[threading.Thread, list[str]]:
    result: list[str] = []

    def run() -> None:
        try:
            result.append(Supervisor(run_id, worker="cpu:1", seat=Seat("cpu")).run())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_preempted_run_resumes_later_and_ends_with_the_uninterrupted_model(tmp_path: Path) -> None:
    owner = make_user("alice", "admin")
    # A pool of its own: a live worker of another suite's stack (same database, pool "default")
    # must not be the one that takes these runs.
    cpu_worker("cpu", pool=POOL)
    program = get_program("tinygpt")
    assert program is not None
    low = waiting_run(
        owner, pool=POOL, gpus=0, priority=10, program="tinygpt", params=resolve_params(program, TINY)
    )
    schedule_pass()  # (the launch's own pass, on commit, may have placed it already)
    assert Reservation.objects.filter(run=low).count() == 1
    thread, result = supervise_in_thread(low.pk)
    wait_for(lambda: Checkpoint.objects.filter(run=low).exists(), 120, message="a first checkpoint")

    scripted = get_program("scripted")
    assert scripted is not None
    high = waiting_run(
        owner,
        pool=POOL,
        gpus=0,
        priority=90,
        program="scripted",
        params=resolve_params(scripted, {"lines": 3}),
    )
    schedule_pass()  # the launch's pass preempted it already; this one finds it stopping
    wait_for(lambda: Run.objects.get(pk=low.pk).status != RunStatus.RUNNING, 10, message="the preemption")
    thread.join(timeout=120)
    assert result == [RunStatus.QUEUED]
    low.refresh_from_db()
    assert (low.status, low.preempt_count, low.queue) == (RunStatus.QUEUED, 1, "")
    # The preempted run's devices went to the high one, by the pass on its requeue.
    assert Reservation.objects.filter(run=high).count() == 1
    high_thread, high_result = supervise_in_thread(high.pk)
    high_thread.join(timeout=60)
    assert high_result == [RunStatus.SUCCEEDED]

    schedule_pass()  # (the launch's own pass, on commit, may have placed it already)
    assert Reservation.objects.filter(run=low).count() == 1
    thread, result = supervise_in_thread(low.pk)
    thread.join(timeout=300)
    assert result == [RunStatus.SUCCEEDED]
    model = Artifact.objects.get(run=low, name="model.safetensors")
    assert model.sha256 == reference_sha256(tmp_path)


def test_the_fewest_lower_priority_preemptible_runs_on_one_worker_are_chosen() -> None:
    owner = make_user("alice", "admin")
    worker = gpu_worker("w", 4)
    runs = [
        waiting_run(owner, gpus=gpus, priority=priority) for gpus, priority in ((1, 10), (1, 20), (2, 30))
    ]
    schedule_pass()
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(status=RunStatus.RUNNING, attempt=1)
    head = Candidate(0, owner.pk, "alice", "a100", 2, 80, timezone.now())
    # Two GPUs: the single 2-GPU run at priority 30 beats two 1-GPU runs (fewest runs stopped).
    assert [run_id for run_id, _ in choose(head, timezone.now())] == [runs[2].pk]
    Run.objects.filter(pk=runs[2].pk).update(preemptible=False)
    assert sorted(run_id for run_id, _ in choose(head, timezone.now())) == sorted([runs[0].pk, runs[1].pk])
    Run.objects.filter(pk__in=[runs[0].pk, runs[1].pk]).update(
        preempt_count=3
    )  # CONTROLPLANE_MAX_PREEMPTIONS
    assert choose(head, timezone.now()) == []
    assert worker.pk
