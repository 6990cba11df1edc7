"""The whole path on the production topology: API → Postgres → Redis → Celery worker → real
torch training → artifact download. Nothing is mocked."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors import safe_open

from tests.conftest import TINY_TINYGPT, Stack, process_alive, wait_for, wait_for_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def launch(api: httpx.Client, program: str, params: dict[str, Any], name: str = "e2e") -> dict[str, Any]:
    response = api.post("/api/v1/runs/", json={"name": name, "program": program, "params": params})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def all_logs(api: httpx.Client, run_id: int, page: int = 1000) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        body = api.get(f"/api/v1/runs/{run_id}/logs/?after={after}&limit={page}").json()
        lines += body["results"]
        if not body["results"]:
            return lines
        after = body["next_after"]


def test_a_launched_tinygpt_run_trains_and_its_model_downloads_intact(
    stack: Stack, live_api: httpx.Client
) -> None:
    run = launch(live_api, "tinygpt", TINY_TINYGPT)
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1
    assert done["exit_code"] == 0
    assert done["progress"] == {"step": TINY_TINYGPT["steps"], "total": TINY_TINYGPT["steps"]}
    assert done["device"] == "cpu fp32"
    assert done["enqueued_at"] is not None

    loss = live_api.get(f"/api/v1/runs/{run['id']}/metrics/?key=train/loss").json()["points"]
    assert [p["step"] for p in loss] == list(range(1, TINY_TINYGPT["steps"] + 1))
    assert loss[-1]["value"] < loss[0]["value"]
    for key in ("val/loss", "lr", "tokens_per_s", "step_time_ms"):
        assert live_api.get(f"/api/v1/runs/{run['id']}/metrics/?key={key}").json()["points"], key

    logs = all_logs(live_api, run["id"])
    assert [line["seq"] for line in logs] == list(range(1, len(logs) + 1))
    assert any(line["stream"] == "stdout" for line in logs)

    artifacts = live_api.get(f"/api/v1/runs/{run['id']}/artifacts/").json()
    model = next(a for a in artifacts if a["name"] == "model.safetensors")
    download = live_api.get(model["download_url"])
    assert download.status_code == 200
    assert download.headers["content-length"] == str(model["size"])
    assert download.headers["etag"] == f'"{model["sha256"]}"'
    assert "attachment" in download.headers["content-disposition"]
    assert hashlib.sha256(download.content).hexdigest() == model["sha256"]

    path = stack.data_dir / "downloaded.safetensors"
    path.write_bytes(download.content)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert len(list(handle.keys())) > 0
    assert metadata["format"] == "tinygpt/1"
    assert int(metadata["step"]) == TINY_TINYGPT["steps"]
    from workers.programs.tinygpt.evaluate import evaluate_safetensors

    assert evaluate_safetensors(path) == pytest.approx(float(metadata["final_val_loss"]), abs=1e-5)
    val = live_api.get(f"/api/v1/runs/{run['id']}/metrics/?key=val/loss").json()["points"]
    assert val[-1]["value"] == pytest.approx(float(metadata["final_val_loss"]), abs=1e-5)

    # Range: the middle of the file, and a suffix.
    middle = live_api.get(model["download_url"], headers={"Range": "bytes=100-199"})
    assert middle.status_code == 206
    assert middle.headers["content-range"] == f"bytes 100-199/{model['size']}"
    assert middle.content == download.content[100:200]
    suffix = live_api.get(model["download_url"], headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206
    assert suffix.content == download.content[-10:]
    refused = live_api.get(model["download_url"], headers={"Range": f"bytes={model['size']}-"})
    assert refused.status_code == 416
    assert (
        live_api.get(model["download_url"], headers={"If-None-Match": download.headers["etag"]}).status_code
        == 304
    )


def test_a_duplicated_task_delivery_runs_the_program_once(stack: Stack, live_api: httpx.Client) -> None:
    from controlplane.celery import app

    run = launch(live_api, "scripted", {"mode": "sleep", "sleep": 2})
    # Deliver the same task twice more, as a broker redelivery would.
    app.send_task("workers.tasks.supervise_run", args=[run["id"]], queue="training")
    app.send_task("workers.tasks.supervise_run", args=[run["id"]], queue="training")
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "succeeded"
    assert done["attempt"] == 1
    starts = [line for line in all_logs(live_api, run["id"]) if "started on" in line["line"]]
    assert len(starts) == 1
    time.sleep(1)
    assert live_api.get(f"/api/v1/runs/{run['id']}/").json()["attempt"] == 1


def test_cancel_stops_a_running_program_within_ten_seconds(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"mode": "ignore_sigterm", "sleep": 600})
    wait_for(
        lambda: live_api.get(f"/api/v1/runs/{run['id']}/").json()["progress"],
        30,
        message="the program to run",
    )
    pid = int((stack.data_dir / "runs" / str(run["id"]) / "program.pid").read_text())
    started = time.monotonic()
    response = live_api.post(f"/api/v1/runs/{run['id']}/cancel/")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelling"
    done = wait_for_status(live_api, run["id"], TERMINAL, timeout=15)
    assert done["status"] == "cancelled"
    assert time.monotonic() - started < 10
    assert done["error"]["kind"] == "cancelled"
    assert not process_alive(pid)


def test_children_of_a_cancelled_program_end_with_it(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"mode": "fork_child", "sleep": 600})
    child_pid_file = stack.data_dir / "runs" / str(run["id"]) / "child.pid"
    wait_for(child_pid_file.exists, 30, message="the child to start")
    wait_for(lambda: child_pid_file.read_text().strip(), 5, message="the child pid")
    child = int(child_pid_file.read_text())
    live_api.post(f"/api/v1/runs/{run['id']}/cancel/")
    assert wait_for_status(live_api, run["id"], TERMINAL, timeout=15)["status"] == "cancelled"
    wait_for(lambda: not process_alive(child), 5, message="the child to die")


def test_a_failing_program_fails_with_a_readable_error_and_keeps_its_logs(
    stack: Stack, live_api: httpx.Client
) -> None:
    run = launch(live_api, "scripted", {"mode": "fail", "lines": 30, "exit_code": 7})
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "failed"
    assert done["exit_code"] == 7
    assert done["error"]["kind"] == "program"
    assert done["error"]["code"] == "exit_7"
    assert "the scripted failure" in done["error"]["message"]
    lines = all_logs(live_api, run["id"])
    assert sum(1 for line in lines if line["line"].startswith("line ")) == 30
    assert any(line["stream"] == "stderr" and "scripted failure" in line["line"] for line in lines)


def test_binary_garbage_and_malformed_events_never_break_a_run(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"mode": "garbage", "lines": 5})
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    lines = all_logs(live_api, run["id"])
    assert any("\ufffd" in line["line"] and "garbage" in line["line"] for line in lines)
    skipped = [
        line for line in lines if line["stream"] == "system" and "skipped a malformed event" in line["line"]
    ]
    assert len(skipped) == 4
    loss = live_api.get(f"/api/v1/runs/{run['id']}/metrics/?key=train/loss").json()["points"]
    assert {"step": 99, "value": 0.5} in loss


def test_paths_outside_the_run_directory_are_refused(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"mode": "escape", "lines": 0})
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "succeeded"
    names = [a["name"] for a in live_api.get(f"/api/v1/runs/{run['id']}/artifacts/").json()]
    assert sorted(names) == ["real.bin", "result.txt"]
    refused = [line["line"] for line in all_logs(live_api, run["id"]) if "refused" in line["line"]]
    assert len(refused) == 2
    assert all("outside the run directory" in line for line in refused)


def test_huge_log_lines_are_truncated_not_fatal(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"mode": "ok", "lines": 2, "line_bytes": 2_000_000})
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "succeeded"
    lines = [line["line"] for line in all_logs(live_api, run["id"]) if line["stream"] == "stdout"]
    assert len(lines) == 2
    assert all("more bytes truncated" in line and len(line) < 20_000 for line in lines)


def test_a_program_that_cannot_start_fails_as_a_config_error(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "missing-binary", {})
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "failed"
    assert done["error"]["kind"] == "config"
    assert "could not start" in done["error"]["message"]


def test_config_errors_found_at_run_time_fail_once_as_config(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"config_error": True})
    done = wait_for_status(live_api, run["id"], TERMINAL)
    assert done["status"] == "failed"
    assert done["error"]["kind"] == "config"
    assert done["error"]["message"] == "config error: this dataset needs at least 4 GPUs"
    assert done["attempt"] == 1


def test_the_request_id_follows_a_launch_into_the_worker(stack: Stack, live_api: httpx.Client) -> None:
    response = live_api.post(
        "/api/v1/runs/",
        json={"name": "traced", "program": "scripted", "params": {"lines": 1}},
        headers={"X-Request-ID": "trace-me-0123"},
    )
    assert response.headers["x-request-id"] == "trace-me-0123"
    wait_for_status(live_api, response.json()["id"], TERMINAL)
    worker_log = (stack.logs / "worker.log").read_text()
    assert '"request_id": "trace-me-0123"' in worker_log
    assert f'"run_id": {response.json()["id"]}' in worker_log


def test_a_failed_run_retried_runs_again_and_continues_its_log(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"mode": "fail", "lines": 3})
    assert wait_for_status(live_api, run["id"], TERMINAL)["status"] == "failed"
    first_lines = all_logs(live_api, run["id"])
    assert live_api.post(f"/api/v1/runs/{run['id']}/retry/").status_code == 202
    again = wait_for_status(live_api, run["id"], TERMINAL)
    assert again["attempt"] == 2
    assert again["status"] == "failed"
    lines = all_logs(live_api, run["id"])
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert len(lines) == 2 * len(first_lines)
    running = launch(live_api, "scripted", {"mode": "sleep", "sleep": 30})
    assert live_api.post(f"/api/v1/runs/{running['id']}/retry/").status_code == 409
    live_api.post(f"/api/v1/runs/{running['id']}/cancel/")
    wait_for_status(live_api, running["id"], TERMINAL)


def test_a_program_that_forks_and_exits_leaves_no_child_behind(stack: Stack, live_api: httpx.Client) -> None:
    run = launch(live_api, "scripted", {"mode": "fork_child", "sleep": 0, "lines": 1})
    done = wait_for_status(live_api, run["id"], TERMINAL, timeout=60)
    assert done["status"] == "succeeded"
    child = int((stack.data_dir / "runs" / str(run["id"]) / "child.pid").read_text())
    wait_for(lambda: not process_alive(child), 10, message="the forked child to be ended")


def test_the_maximum_duration_stops_an_attempt_as_a_timeout(stack: Stack, live_api: httpx.Client) -> None:
    response = live_api.post(
        "/api/v1/runs/",
        json={
            "name": "bounded",
            "program": "scripted",
            "params": {"mode": "ignore_sigterm", "sleep": 600},
            "max_duration_seconds": 2,
        },
    )
    done = wait_for_status(live_api, response.json()["id"], TERMINAL, timeout=30)
    assert (done["status"], done["error"]["kind"], done["error"]["code"]) == (
        "failed",
        "timeout",
        "max_duration",
    )
    assert "maximum duration of 2 s" in done["error"]["message"]


def test_a_run_trains_on_a_dataset_fetched_over_http_and_records_its_hash(
    stack: Stack, live_api: httpx.Client, tmp_path: Path
) -> None:
    import http.server
    import threading

    corpus = ("Distributed training needs checkpoints that survive a lost worker.\n" * 300).encode()
    (tmp_path / "corpus.txt").write_bytes(corpus)
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe" * 5000)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        good = launch(live_api, "tinygpt", {**TINY_TINYGPT, "dataset_url": f"{base}/corpus.txt"})
        bad = launch(live_api, "tinygpt", {**TINY_TINYGPT, "dataset_url": f"{base}/binary.bin"})
        done = wait_for_status(live_api, good["id"], TERMINAL)
        assert done["status"] == "succeeded", done
        model = next(
            a for a in live_api.get(f"/api/v1/runs/{good['id']}/artifacts/").json() if a["kind"] == "model"
        )
        assert model["metadata"]["safetensors"]["dataset_sha256"] == hashlib.sha256(corpus).hexdigest()
        staged = [line["line"] for line in all_logs(live_api, good["id"]) if "dataset staged" in line["line"]]
        assert staged == [f"dataset staged: {len(corpus)} bytes, sha256 {hashlib.sha256(corpus).hexdigest()}"]
        failed = wait_for_status(live_api, bad["id"], TERMINAL)
        assert (failed["status"], failed["error"]["kind"], failed["error"]["code"]) == (
            "failed",
            "data",
            "invalid_dataset",
        )
        assert "not UTF-8" in failed["error"]["message"]
    finally:
        server.shutdown()
