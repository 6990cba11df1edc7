"""System metrics through the real supervisor: a supervisor in this process (as the Celery task
calls it) samples its program's process group into `system/*` series of the run, through the
same batches as the program's own points, and stops when the program exits."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from prometheus_client import REGISTRY

from runs.models import MetricPoint, Run, RunStatus
from runs.programs import get_program, resolve_params
from runs.storage import run_dir
from workers.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "test-system-metrics"  # nothing consumes it: the test supervises its runs itself

PROGRAMS = """
[programs.system]
command = ["{python}", "-m", "tests.workers.system_program"]
description = "Busy, holding memory (tests/workers/system_program.py)"

[programs.system.params]
seconds = { type = "number", default = 2, minimum = 0, maximum = 60 }
mib = { type = "integer", default = 64, minimum = 0, maximum = 1024 }
linger = { type = "boolean", default = false }
"""


@pytest.fixture(autouse=True)
def worker_settings(settings: Any, tmp_path: Path) -> None:
    programs = tmp_path / "programs.toml"
    programs.write_text(PROGRAMS)
    settings.PROGRAMS_FILE = str(programs)
    settings.RUNS_DIR = tmp_path / "runs"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.CONTROLPLANE = {
        **settings.CONTROLPLANE,
        "HEARTBEAT_SECONDS": 0.5,
        "FLUSH_INTERVAL_SECONDS": 0.05,
        "LEASE_SECONDS": 30.0,
        "SYSTEM_METRICS_SECONDS": 0.4,
    }


def system_run(owner: User, **params: Any) -> Run:
    program = get_program("system")
    assert program is not None
    return Run.objects.create(
        name="system", owner=owner, program="system", params=resolve_params(program, params), queue=QUEUE
    )


def series(run: Run, key: str) -> list[tuple[int, float | None, datetime]]:
    rows = MetricPoint.objects.filter(series__run=run, series__key=key).order_by("step")
    return list(rows.values_list("step", "value", "ts"))


def test_a_run_records_its_programs_cpu_and_memory_as_system_series(owner: User) -> None:
    run = system_run(owner, seconds=3, mib=64)
    assert Supervisor(run.pk).run() == "succeeded"
    cpu, rss = series(run, "system/cpu_percent"), series(run, "system/rss_mib")
    assert len(cpu) >= 3 and len(rss) >= 3
    cores = os.cpu_count() or 1
    assert all(value is not None and 0 <= value <= 100 * cores for _, value, _ in cpu)
    # A busy loop on a shared machine: most samples see a good share of a core.
    assert max(value or 0 for _, value, _ in cpu) >= 20
    # The program holds 64 MiB on top of an interpreter.
    assert max(value or 0 for _, value, _ in rss) >= 64
    assert all(value is not None and 10 < value < 2048 for _, value, _ in rss)
    # Steps: whole seconds since launch, one per sample, increasing.
    steps = [step for step, _, _ in rss]
    assert steps == sorted(set(steps)) and steps[-1] <= 60
    # The program's own series is there too, unchanged; no GPU series without NVML or GPUs.
    assert series(run, "train/loss")
    assert not MetricPoint.objects.filter(series__run=run, series__key__startswith="system/gpu").exists()


def test_sampling_stops_when_the_program_exits_even_while_a_child_holds_its_pipes(owner: User) -> None:
    run = system_run(owner, seconds=1.5, mib=0, linger=True)
    assert Supervisor(run.pk).run() == "succeeded"
    exited_at = float((run_dir(run.pk) / "exited_at.txt").read_text())
    points = series(run, "system/rss_mib")
    assert points, "no sample while the program ran"
    # The supervisor waited about two more seconds for the child's pipes (five samples' worth)
    # and sampled none of it: every sample was taken while the program ran.
    assert max(ts.timestamp() for _, _, ts in points) <= exited_at + 1.0
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.finished_at is not None and run.finished_at.timestamp() > exited_at + 1.5


def launch_to_start_count(pool: str = "default", band: str = "50-74") -> float:
    labels = {"pool": pool, "priority_band": band}
    return REGISTRY.get_sample_value("controlplane_fleet_launch_to_start_seconds_count", labels) or 0.0


def test_a_first_attempt_observes_its_launch_to_start_wait_by_pool_and_priority_band(owner: User) -> None:
    before_urgent, before_default = launch_to_start_count(band="75-100"), launch_to_start_count()
    run = system_run(owner, seconds=0.2, mib=0)
    Run.objects.filter(pk=run.pk).update(priority=90, created_at=timezone.now() - timedelta(seconds=30))
    assert Supervisor(run.pk).run() == "succeeded"
    assert launch_to_start_count(band="75-100") == before_urgent + 1
    assert launch_to_start_count() == before_default
    total = REGISTRY.get_sample_value(
        "controlplane_fleet_launch_to_start_seconds_sum", {"pool": "default", "priority_band": "75-100"}
    )
    assert total is not None and total >= 30


def test_a_resumed_attempt_is_no_launch_and_its_samples_go_on_in_seconds_since_launch(owner: User) -> None:
    before = launch_to_start_count()
    run = system_run(owner, seconds=1.5, mib=0)
    # Attempt 1 was lost ten minutes after launch; this supervisor claims attempt 2.
    Run.objects.filter(pk=run.pk).update(attempt=1, created_at=timezone.now() - timedelta(minutes=10))
    assert Supervisor(run.pk).run() == "succeeded"
    assert launch_to_start_count() == before
    steps = [step for step, _, _ in series(run, "system/rss_mib")]
    assert steps and all(600 <= step <= 700 for step in steps)


def test_no_system_series_when_sampling_is_off(owner: User, settings: Any) -> None:
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "SYSTEM_METRICS_SECONDS": 0}
    run = system_run(owner, seconds=1, mib=0)
    assert Supervisor(run.pk).run() == "succeeded"
    assert not MetricPoint.objects.filter(series__run=run, series__key__startswith="system/").exists()
    assert series(run, "train/loss")
