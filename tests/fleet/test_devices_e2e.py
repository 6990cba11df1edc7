"""Two fake-GPU workers (real Celery processes) and runs that ask for GPUs: each program sees
exactly its reserved devices in CUDA_VISIBLE_DEVICES and CONTROLPLANE_GPUS, and no device is
given to two runs at once. No GPU is needed: without NVML the declared indices are taken as is.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounts.tokens import do_issue_token
from tests.conftest import (
    ROOT,
    _healthy,
    _stop,
    celery_worker_command,
    free_port,
    make_user,
    stack_env,
    wait_for,
)
from tests.e2e.test_training_flow import TERMINAL, all_logs

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet_stack(transactional_db: Any, tmp_path: Path) -> Iterator[str]:
    env = stack_env(tmp_path / "data")
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "controlplane.asgi:application", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=(logs / "web.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
    ]
    for name, gpus in (("left", "0,1"), ("right", "2,3")):
        worker_env = {**env, "CONTROLPLANE_WORKER_POOL": "fake", "CONTROLPLANE_WORKER_GPUS": gpus}
        processes.append(
            subprocess.Popen(
                celery_worker_command("training", f"{name}-{port}@%h", concurrency=3),
                cwd=ROOT,
                env=worker_env,
                stdout=(logs / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base_url), 30, message="the web server")
        for name in ("left", "right"):
            wait_for(lambda n=name: b"ready" in (logs / f"{n}.log").read_bytes(), 60, message=name)
        yield base_url
    finally:
        for process in processes:
            _stop(process)


def test_each_program_sees_exactly_its_devices_and_none_is_shared(fleet_stack: str) -> None:
    token = do_issue_token(make_user("gpu-user", "admin")).plaintext
    with httpx.Client(base_url=fleet_stack, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        ids = []
        for _ in range(4):
            response = api.post(
                "/api/v1/runs/",
                json={
                    "name": "gpus",
                    "program": "envprint",
                    "params": {"sleep": 4},
                    "resources": {"pool": "fake", "gpus": 1},
                },
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        too_big = api.post(
            "/api/v1/runs/",
            json={"name": "x", "program": "envprint", "resources": {"pool": "fake", "gpus": 16}},
        )
        assert too_big.status_code == 400 and "resources.gpus" in too_big.json(), too_big.text

        def done() -> list[dict[str, Any]] | None:
            runs = [api.get(f"/api/v1/runs/{run_id}/").json() for run_id in ids]
            return runs if all(run["status"] in TERMINAL for run in runs) else None

        runs = wait_for(done, 120, interval=1, message="the four runs")
        assert {run["status"] for run in runs} == {"succeeded"}
        seen = []
        for run in runs:
            lines = [line["line"] for line in all_logs(api, run["id"])]
            visible = next(line for line in lines if line.startswith("CUDA_VISIBLE_DEVICES="))
            gpus = next(line for line in lines if line.startswith("CONTROLPLANE_GPUS="))
            assert visible.split("=")[1] == gpus.split("=")[1]
            seen.append(visible.split("=")[1])
        # Four one-GPU runs on four GPUs, all at once: each device exactly once.
        assert sorted(seen) == ["0", "1", "2", "3"]
        workers = api.get("/api/v1/workers/").json()
        assert {w["pool"] for w in workers["results"] if w["state"] == "active"} >= {"fake"}
