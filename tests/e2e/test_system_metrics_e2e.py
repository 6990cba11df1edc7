"""A real tinygpt run under a live Celery worker (a pool of its own) records `system/*` series:
CPU and memory of its process group, sampled every second, through the worker's ingest path.
No GPU here and no NVML: no GPU series. Nothing is mocked."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from fleet.agent import lost_before
from fleet.models import Worker
from runs.models import MetricPoint, Run
from tests.conftest import (
    ROOT,
    TINY_TINYGPT,
    _stop,
    celery_worker_command,
    free_port,
    make_user,
    stack_env,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def sampling_worker(transactional_db: Any, tmp_path: Path) -> Iterator[str]:
    """One worker, one CPU slot, in a pool no other suite's workers serve; its pool's name."""
    port = free_port()
    pool = f"system-metrics-{port}"
    env = {
        **stack_env(tmp_path / "data"),
        "CONTROLPLANE_WORKER_POOL": pool,
        "CONTROLPLANE_WORKER_GPUS": "",
        "CONTROLPLANE_SYSTEM_METRICS_SECONDS": "1",
    }
    log = (tmp_path / "worker.log").open("wb")
    # Its -Q queue is private too: it takes only what the fleet sends to its own queue.
    worker = subprocess.Popen(
        celery_worker_command(f"unused-{port}", f"sys-{port}@%h", concurrency=2),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Launch only once its worker is registered: a pool nobody serves yet is a 400.
        wait_for(
            lambda: Worker.objects.filter(pool=pool, heartbeat_at__gte=lost_before()).exists(),
            90,
            interval=0.5,
            message="the worker to register",
        )
        yield pool
    finally:
        _stop(worker)
        log.close()


def test_a_tinygpt_run_records_cpu_and_memory_of_its_processes(sampling_worker: str) -> None:
    owner = make_user("sysmetrics-owner", "operator")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(owner).plaintext}")
    response = api.post(
        "/api/v1/runs/",
        {
            "name": "system metrics",
            "program": "tinygpt",
            "params": {**TINY_TINYGPT, "steps": 40},
            "resources": {"pool": sampling_worker},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    run_id = response.json()["id"]

    def finished() -> Run | None:
        run = Run.objects.get(pk=run_id)
        return run if run.status in {"succeeded", "failed", "cancelled", "dead"} else None

    run = wait_for(finished, 240, interval=0.5, message="the run to finish")
    assert run.status == "succeeded", run.error_message
    assert run.started_at is not None and run.finished_at is not None

    def points(key: str) -> list[tuple[int, float | None, Any]]:
        rows = MetricPoint.objects.filter(series__run_id=run_id, series__key=key).order_by("step")
        return list(rows.values_list("step", "value", "ts"))

    cpu, rss = points("system/cpu_percent"), points("system/rss_mib")
    assert len(cpu) >= 2 and len(rss) >= 2
    cores = os.cpu_count() or 1
    assert all(value is not None and 0 <= value <= 100 * cores for _, value, _ in cpu)
    assert max(value or 0 for _, value, _ in cpu) > 1  # it trained: some CPU was used
    # An interpreter that imported torch: far above 10 MiB, far below the machine.
    assert all(value is not None and 10 < value < 8192 for _, value, _ in rss)
    # Taken while the run ran; steps are seconds since launch.
    ran_for = (run.finished_at - run.created_at).total_seconds()
    assert all(run.started_at <= ts <= run.finished_at for _, _, ts in rss)
    assert all(0 <= step <= ran_for + 1 for step, _, _ in rss)
    # The run page's chart API lists them beside the training series.
    charts = api.get(f"/api/v1/runs/{run_id}/charts/", {"max_points": 500})
    assert charts.status_code == 200, charts.content
    keys = {series["key"] for series in charts.json()["series"]}
    assert {"system/cpu_percent", "system/rss_mib", "train/loss"} <= keys
    assert not any(key.startswith("system/gpu") for key in keys)  # no NVML on this machine
