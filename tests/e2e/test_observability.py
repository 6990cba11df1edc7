"""Observability on the production topology: one request id from the click to the training
process, JSON log lines from every process, and every metric with sane values after real runs,
scraped from the web's `/metrics` and from a real worker's own port. Nothing is mocked.

The stack here is its own (uvicorn + a Celery worker on a private queue), so its worker metrics
port and its queue belong to these tests alone.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from accounts.tokens import do_issue_token
from runs.models import Run
from tests.conftest import (
    ROOT,
    TINY_TINYGPT,
    _healthy,
    _stop,
    celery_worker_command,
    free_port,
    make_user,
    stack_env,
    wait_for,
    wait_for_status,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}
SCHEMA = {"timestamp", "level", "logger", "event"}


OBSERVED_POOL = "observed"


def in_pool() -> dict[str, Any]:
    """Launch into the stack's own pool, once its worker is registered (again: a transactional
    test empties the tables, and the worker's next heartbeat, within 5 s, registers it anew)."""
    from fleet.models import Worker

    wait_for(lambda: Worker.objects.filter(pool=OBSERVED_POOL).exists(), 20, message="the observed worker")
    return {"resources": {"pool": OBSERVED_POOL}}


@dataclass
class ObservedStack:
    base_url: str
    queue: str
    worker_metrics_url: str
    logs: Path
    data_dir: Path

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        """Every line the process wrote to stderr, parsed: a line that is not JSON fails here."""
        text = (self.logs / f"{name}.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def observed(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ObservedStack]:
    data_dir = tmp_path_factory.mktemp("observed-data")
    logs = tmp_path_factory.mktemp("observed-logs")
    port, metrics_port = free_port(), free_port()
    queue = f"observed-{port}"
    env = stack_env(data_dir)
    env.update(
        CONTROLPLANE_DEFAULT_QUEUE=queue,
        CONTROLPLANE_READY_QUEUES=queue,
        # A pool of its own: other suites' live workers share the test database's fleet.
        CONTROLPLANE_WORKER_POOL=OBSERVED_POOL,
        CONTROLPLANE_WORKER_METRICS_PORT=str(metrics_port),
    )
    web = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "controlplane.asgi:application", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=(logs / "web.out").open("wb"),
        stderr=(logs / "web.log").open("wb"),
    )
    worker = subprocess.Popen(
        celery_worker_command(queue, f"{queue}@%h"),
        cwd=ROOT,
        env=env,
        stdout=(logs / "worker.out").open("wb"),
        stderr=(logs / "worker.log").open("wb"),
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base_url), 30, message="the web server")
        wait_for(lambda: b"ready." in (logs / "worker.log").read_bytes(), 60, message="the worker")
        yield ObservedStack(base_url, queue, f"http://127.0.0.1:{metrics_port}/metrics", logs, data_dir)
    finally:
        _stop(worker)
        _stop(web)


@pytest.fixture
def user_and_token(observed: ObservedStack, transactional_db: Any) -> tuple[User, str]:
    user = make_user("ophelia", "operator")
    return user, do_issue_token(user).plaintext


@pytest.fixture
def api(observed: ObservedStack, user_and_token: tuple[User, str]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {user_and_token[1]}"}
    with httpx.Client(base_url=observed.base_url, headers=headers, timeout=30) as client:
        yield client


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(body: str, name: str, **labels: str) -> float | None:
    return samples(body).get((name, frozenset(labels.items())))


def number(body: str, name: str, **labels: str) -> float:
    found = value(body, name, **labels)
    assert found is not None, (name, labels)
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def test_one_request_id_follows_a_launch_from_the_api_to_the_training_process(
    observed: ObservedStack, api: httpx.Client, user_and_token: tuple[User, str]
) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:16]}"
    response = api.post(
        "/api/v1/runs/",
        json={"name": "traced", "program": "scripted", "params": {"mode": "sleep", "sleep": 2}, **in_pool()},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == request_id
    run_id = response.json()["id"]

    pid_file = observed.data_dir / "runs" / str(run_id) / "program.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, message="the program")
    environment = _environ(int(pid_file.read_text()))
    assert environment["CONTROLPLANE_REQUEST_ID"] == request_id
    assert environment["CONTROLPLANE_RUN_ID"] == str(run_id)
    assert wait_for_status(api, run_id, TERMINAL)["status"] == "succeeded"

    web = [line for line in observed.log_lines("web") if line.get("request_id") == request_id]
    assert {"run_launched", "run_enqueued"} <= {line["event"] for line in web}
    launched = next(line for line in web if line["event"] == "run_launched")
    assert launched["user_id"] == user_and_token[0].pk
    assert launched["run_id"] == run_id

    def worker_lines() -> list[dict[str, Any]]:
        return [line for line in observed.log_lines("worker") if line.get("request_id") == request_id]

    wait_for(
        lambda: any(line["event"] == "attempt_finished" for line in worker_lines()), 10, message="the end"
    )
    traced = worker_lines()
    supervisor = [line for line in traced if line["logger"] == "workers.supervisor"]
    assert {"process_started", "attempt_finished"} <= {line["event"] for line in supervisor}
    for line in supervisor:
        assert (line["run_id"], line["attempt"]) == (run_id, 1)
        assert line["task_id"]
    # The worker's own lines (not the supervisor's) carry the same ids.
    others = [line for line in traced if line["logger"] != "workers.supervisor"]
    assert any(line["event"] == "attempt_concluded" and line["run_id"] == run_id for line in others)
    assert len({line["task_id"] for line in traced}) == 1


def test_every_process_writes_only_json_lines_with_the_schema(observed: ObservedStack) -> None:
    for name in ("web", "worker"):
        lines = observed.log_lines(name)  # json.loads fails on any other line
        assert lines, name
        for line in lines:
            assert set(line) >= SCHEMA, (name, line)
            assert line["timestamp"].endswith("Z")


def test_every_metric_has_sane_values_after_a_real_training_run(
    observed: ObservedStack, api: httpx.Client, user_and_token: tuple[User, str]
) -> None:
    from controlplane.celery import app

    run = api.post(
        "/api/v1/runs/", json={"name": "metered", "program": "tinygpt", "params": TINY_TINYGPT, **in_pool()}
    )
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    headers = {"Authorization": f"Bearer {user_and_token[1]}"}
    ws_url = observed.base_url.replace("http://", "ws://") + f"/ws/runs/{run_id}/"
    with connect(ws_url, additional_headers=headers) as socket:
        socket.recv(timeout=10)
        open_body = httpx.get(f"{observed.base_url}/metrics", timeout=10).text
        assert value(open_body, "controlplane_websocket_connections") == 1
    assert wait_for_status(api, run_id, TERMINAL)["status"] == "succeeded"
    # The beat task of the housekeeping worker, sent here to this stack's worker.
    app.send_task("audit.tasks.housekeeping_audit_checkpoint", queue=observed.queue)

    web = httpx.get(f"{observed.base_url}/metrics", timeout=10).text
    finished = value(
        web, "controlplane_runs_finished_total", program="tinygpt", outcome="succeeded", failure_kind=""
    )
    assert finished is not None and finished >= 1
    assert number(web, "controlplane_runs", status="succeeded") >= 1
    assert value(web, "controlplane_runs", status="running") == 0
    assert value(web, "controlplane_dead_letters") == 0
    assert value(web, "controlplane_queue_depth", queue=observed.queue) == 0
    assert value(web, "controlplane_queue_oldest_age_seconds", queue=observed.queue) == 0
    assert value(web, "controlplane_workers_live", queue=observed.queue) == 1
    assert wait_for(
        lambda: (
            value(
                httpx.get(f"{observed.base_url}/metrics", timeout=10).text,
                "controlplane_websocket_connections",
            )
            == 0
        ),
        10,
        message="the websocket gauge to drop",
    )
    assert "# TYPE controlplane_circuit_breaker_state gauge" in web
    assert value(web, "controlplane_http_requests_rejected_total", reason="metrics_token") == 0
    assert number(web, "django_http_requests_total_by_method_total", method="POST") >= 1
    assert re.search(r"^django_db_execute_total\{", web, re.MULTILINE)
    assert "# TYPE django_cache_get_total counter" in web
    # The fleet sends a run to the queue of the worker it placed it on (worker.<name>).
    dispatched_to = Run.objects.values_list("queue", flat=True).get(pk=run_id)
    assert dispatched_to.startswith("worker."), dispatched_to
    # The worker's series belong to the worker's endpoint: the web's stay empty.
    assert value(web, "controlplane_dispatch_latency_seconds_count", queue=dispatched_to) is None

    def worker_body() -> str:
        return httpx.get(observed.worker_metrics_url, timeout=10).text

    worker = wait_for(
        lambda: next((body for body in [worker_body()] if "controlplane_audit_chain_ok" in body), None),
        30,
        message="the audit verification",
    )
    assert number(worker, "controlplane_dispatch_latency_seconds_count", queue=dispatched_to) >= 1
    assert number(worker, "controlplane_dispatch_latency_seconds_sum", queue=dispatched_to) > 0
    steps = TINY_TINYGPT["steps"]
    assert value(worker, "controlplane_training_step_seconds_count", program="tinygpt") == steps
    step_sum = value(worker, "controlplane_training_step_seconds_sum", program="tinygpt")
    assert step_sum is not None and 0 < step_sum < 60
    tokens = value(worker, "controlplane_training_tokens_total", program="tinygpt")
    per_step = TINY_TINYGPT["batch_size"] * TINY_TINYGPT["seq_len"]
    assert tokens == pytest.approx(steps * per_step, rel=1e-6)
    assert number(worker, "controlplane_ingest_batch_size_count", kind="log") >= 1
    assert number(worker, "controlplane_ingest_batch_size_count", kind="metric") >= 1
    assert number(worker, "controlplane_ingest_batch_size_sum", kind="metric") >= steps
    assert number(worker, "controlplane_stream_lag_seconds_count") >= 1
    lag = number(worker, "controlplane_stream_lag_seconds_sum") / number(
        worker, "controlplane_stream_lag_seconds_count"
    )
    assert 0 <= lag < 5
    assert value(worker, "controlplane_lease_expiries_total") == 0
    assert value(worker, "controlplane_reconciler_actions_total", action="requeued") == 0
    assert value(worker, "controlplane_runs_supervised") == 0
    assert value(worker, "controlplane_audit_chain_ok") == 1
    assert number(worker, "controlplane_audit_last_verified_timestamp_seconds") > 1.7e9
    assert value(worker, "controlplane_log_lines_dropped_total", reason="flood") == 0
    # No NVML on this machine: no GPU series rather than zeros.
    assert "controlplane_gpu_memory_used_bytes{" not in worker
    # The database families belong to the web: a worker scrape never queries Postgres.
    assert "controlplane_runs{" not in worker

    ready = httpx.get(f"{observed.base_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["workers"]["live"] == {observed.queue: 1}
    _record_figures(web, worker)


def _record_figures(web: str, worker: str) -> None:
    """The controlplane_* samples after the run, for the docs (test-output/observability-figures.json)."""
    figures = {
        source: {
            name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels)) + "}": round(number, 4)
            for (name, labels), number in sorted(samples(body).items())
            if name.startswith("controlplane_")
            and not name.endswith("_bucket")
            and not name.endswith("_created")
        }
        for source, body in (("web", web), ("worker", worker))
    }
    output = ROOT / "test-output" / "observability-figures.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(figures, indent=2))


def test_standalone_is_ready_with_its_embedded_worker(tmp_path: Path) -> None:
    from tests.e2e.test_standalone import standalone_env

    port = free_port()
    output = tmp_path / "standalone.log"
    env = standalone_env(tmp_path / "data")
    assert "REDIS_URL" not in env and "CONTROLPLANE_WORKER_METRICS_PORT" not in env
    process = subprocess.Popen(
        [sys.executable, "manage.py", "standalone", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=output.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), 90, message="standalone")
        response = wait_for(
            lambda: (r := httpx.get(f"{base}/readyz", timeout=10)).status_code == 200 and r,
            30,
            message="ready",
        )
        checks = response.json()["checks"]
        assert "redis" not in checks
        assert checks["broker"] == {
            "ok": True,
            "latency_ms": checks["broker"]["latency_ms"],
            "transport": "memory",
        }
        assert checks["workers"]["live"] == {"training": 1}
        body = httpx.get(f"{base}/metrics", timeout=10).text
        assert value(body, "controlplane_workers_live", queue="training") == 1
        assert value(body, "controlplane_runs_supervised") == 0
        assert "controlplane_dispatch_latency_seconds" in body  # the embedded worker's, shared
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
