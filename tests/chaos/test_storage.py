"""Object storage under faults, with the production processes: checkpoints and artifacts in an S3
bucket (a real S3 API server, moto), workers and web with separate data directories (no shared
volume). A worker killed mid-run hands its run to a worker that never saw it, which resumes from
the bucket's newest verified checkpoint and ends byte-identical; a bucket down for 30 s and 500s
from S3 mid-upload lose nothing and end with a verified artifact."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.chaos.conftest import CHAOS_TINYGPT, ChaosStack, make_stack, record
from tests.conftest import ROOT, free_port, train_reference_tinygpt, wait_for
from tests.storage.s3server import MotoServer, aws_env

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]
BUCKET = "controlplane-chaos"


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto.log")
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def bucket_stack(tmp_path: Path, endpoint: str, **overrides: str) -> ChaosStack:
    return make_stack(
        tmp_path,
        CONTROLPLANE_STORAGE_URL=f"s3://{BUCKET}/cp",
        CONTROLPLANE_CHECKPOINTS_KEEP="3",
        CONTROLPLANE_BREAKER_COOLDOWN_SECONDS="3",
        **aws_env(endpoint),
        **overrides,
    )


def worker_env(tmp_path: Path, name: str) -> dict[str, str]:
    """A worker's own data and runs directories: nothing shared with the others or the web."""
    return {
        "CONTROLPLANE_DATA_DIR": str(tmp_path / name),
        "CONTROLPLANE_RUNS_DIR": str(tmp_path / name / "runs"),
    }


def bucket_sha256(moto: MotoServer, key: str) -> str:
    body = moto.client().get_object(Bucket=BUCKET, Key=f"cp/{key}")["Body"].read()
    return hashlib.sha256(body).hexdigest()


def check_stored(stack: ChaosStack, moto: MotoServer, run_id: int) -> str:
    """Every registered checkpoint and the model are in the bucket with their registered sha256;
    the model downloads through the web (its own data directory) with the same bytes."""
    for key, sha256 in stack.sql("SELECT storage_key, sha256 FROM runs_checkpoint WHERE run_id = %s", run_id):
        assert key and bucket_sha256(moto, key) == sha256
    key, sha256, artifact_id = stack.sql(
        "SELECT storage_key, sha256, id FROM runs_artifact WHERE run_id = %s AND name = 'model.safetensors'",
        run_id,
    )[0]
    assert bucket_sha256(moto, key) == sha256
    with stack.api() as api:
        download = api.get(f"/api/v1/artifacts/{artifact_id}/download/")
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == sha256
    assert not (stack.root / "data" / "artifacts").exists()  # nothing went through a local store
    return str(sha256)


def test_a_killed_worker_s_run_resumes_on_a_worker_that_never_saw_it(
    tmp_path: Path, moto: MotoServer, reference_model: str
) -> None:
    stack = bucket_stack(tmp_path, moto.url)
    try:
        stack.start_web()
        stack.start_housekeeping()
        stack.start_worker("worker-a", **worker_env(tmp_path, "a"))
        run_id = stack.launch(CHAOS_TINYGPT)
        stack.wait_progress(run_id, 900)
        stack.kill("worker-a", signal.SIGKILL)
        killed_at = time.monotonic()
        stack.start_worker("worker-b", **worker_env(tmp_path, "b"))
        wait_for(partial(stack.attempt_running, run_id, 2), 90, message="the attempt on worker B")
        resumed_after = round(time.monotonic() - killed_at, 1)
        done = stack.wait_status(run_id, {"succeeded", "failed", "dead"})
        assert done["status"] == "succeeded", done
        stack.check_invariants(run_id)
        workers, resumed = zip(
            *stack.sql(
                "SELECT worker, resumed_from_step FROM runs_runattempt WHERE run_id = %s ORDER BY number",
                run_id,
            ),
            strict=True,
        )
        assert workers[0] != workers[1]  # "host:pid" of worker A's process, then of B's
        assert (tmp_path / "a" / "runs" / str(run_id) / "checkpoints").is_dir()
        assert resumed[0] is None and resumed[1] >= 800 and resumed[1] % 200 == 0
        # Worker B had no file of worker A: it fetched the checkpoint from the bucket.
        b_run = tmp_path / "b" / "runs" / str(run_id)
        assert (b_run / "checkpoints" / f"step-{resumed[1]}.pt").is_file()
        assert not (b_run / "checkpoints" / "step-200.pt").exists()  # written by A, never fetched
        assert "downloading the checkpoint of step" in " ".join(
            row[0] for row in stack.sql("SELECT line FROM runs_logline WHERE run_id = %s", run_id)
        )
        sha256 = check_stored(stack, moto, run_id)
        assert sha256 == reference_model  # byte-identical to an uninterrupted run
        kept = stack.sql("SELECT count(*) FROM runs_checkpoint WHERE run_id = %s", run_id)[0][0]
        listed = (
            moto.client().list_objects_v2(Bucket=BUCKET, Prefix=f"cp/checkpoints/{run_id}/").get("KeyCount")
        )
        assert kept == listed <= 4  # the newest 3 and the model's own
        record(
            "storage_cross_worker_resume",
            resumed_from=resumed[1],
            seconds_to_resume=resumed_after,
            checkpoints_kept=kept,
            model_identical=True,
        )
    finally:
        stack.teardown()


def test_a_bucket_down_for_thirty_seconds_and_500s_mid_upload_lose_nothing(
    tmp_path: Path, moto: MotoServer
) -> None:
    control = tmp_path / "proxy-control"
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.s3server", str(port), str(moto.port), str(control)],
        cwd=ROOT,
        stdout=(tmp_path / "proxy.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(endpoint), 20, message="the fault proxy")
    stack = bucket_stack(tmp_path, endpoint)
    try:
        stack.start_web()
        stack.start_housekeeping()
        stack.start_worker("worker", **worker_env(tmp_path, "w"))
        params = {**CHAOS_TINYGPT, "steps": 6000, "eval_every": 1000}
        run_id = stack.launch(params)
        stack.wait_progress(run_id, 300)
        control.write_text("down")
        time.sleep(30)
        registered_while_down = stack.sql("SELECT count(*) FROM runs_checkpoint WHERE run_id = %s", run_id)[
            0
        ][0]
        control.write_text("fail_puts=4")  # back, but the next four uploads get a 500
        done = stack.wait_status(run_id, {"succeeded", "failed", "dead"}, timeout=300)
        assert done["status"] == "succeeded", done
        state = (tmp_path / "proxy-control.state").read_text()
        assert "failed_puts=4" in state and "refused=0" not in state, state
        stack.check_invariants(run_id)
        # A storage fault is retried by the supervisor, never a crash of its task.
        assert "raised unexpected" not in stack.log("worker")
        sha256 = check_stored(stack, moto, run_id)
        assert sha256 == reference_model_for(tmp_path, params)
        steps = [
            row[0]
            for row in stack.sql("SELECT step FROM runs_checkpoint WHERE run_id = %s ORDER BY step", run_id)
        ]
        assert steps[-1] == 6000 or steps[-1] >= 5800
        record(
            "storage_outage",
            bucket_down_seconds=30,
            injected_500s=4,
            checkpoints_registered_while_down=registered_while_down,
            runs_lost=0,
            attempts=done["attempt"],
            artifact_verified=True,
        )
    finally:
        stack.teardown()
        proxy.kill()
        proxy.wait()


def _answers(endpoint: str) -> bool:
    try:
        httpx.get(endpoint, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def reference_model_for(tmp_path: Path, params: dict[str, object]) -> str:
    directory = tmp_path / "reference"
    directory.mkdir()
    return train_reference_tinygpt(directory, dict(params))
