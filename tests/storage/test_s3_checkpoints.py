"""Checkpoints in a bucket: uploaded whole before they are registered, fetched and verified by a
worker that never saw the run (an empty run directory), pruned to the newest N plus the one the
model came from; a store that is down keeps the event for the next try."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from django.contrib.auth.models import User
from django.utils import timezone

from runs import attempts
from runs.attempts import Claim
from runs.models import Artifact, Checkpoint, Run
from runs.storage import StorageUnavailable
from tests.storage.conftest import use_bucket
from tests.storage.s3server import FaultProxy, MotoServer
from tests.workers.test_preparation import Log, Said
from workers.files import register_file
from workers.preparation import choose_checkpoint
from workers.writer import AttemptWriter

pytestmark = pytest.mark.django_db(transaction=True)


def claimed(owner: User) -> Claim:
    run = Run.objects.create(name="s3-ckpt", owner=owner, program="scripted", queue="s3-checkpoints")
    claim = attempts.claim_run(run.pk, "worker-a")
    assert claim is not None
    return claim


def write_checkpoint(claim: Claim, directory: Path, step: int) -> str | None:
    content = f"weights at step {step}".encode() * 1000
    path = directory / "checkpoints" / f"step-{step}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    event = {"type": "checkpoint", "step": step, "path": f"checkpoints/step-{step}.pt"}
    return register_file(claim.run_id, claim.attempt, directory, event, Said())


def objects(moto_server: MotoServer, bucket: str) -> list[str]:
    listed = moto_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_a_worker_that_never_saw_the_run_resumes_from_the_bucket(
    owner: User, tmp_path: Path, bucket: str, moto_server: MotoServer
) -> None:
    claim = claimed(owner)
    worker_a = tmp_path / "a" / "runs" / str(claim.run_id)
    for step in (10, 20):
        assert write_checkpoint(claim, worker_a, step) is None
    row = Checkpoint.objects.get(run_id=claim.run_id, step=20)
    assert row.storage_key == f"checkpoints/{claim.run_id}/20/step-20.pt"
    assert objects(moto_server, bucket) == [
        f"cp/checkpoints/{claim.run_id}/{s}/step-{s}.pt" for s in (10, 20)
    ]
    # The next attempt runs on worker B: another run directory, nothing in it.
    Run.objects.filter(pk=claim.run_id).update(status="queued")
    second = attempts.claim_run(claim.run_id, "worker-b")
    assert second is not None and second.attempt == 2
    worker_b = tmp_path / "b" / "runs" / str(claim.run_id)
    said = Said()
    assert choose_checkpoint(claim.run_id, 2, worker_b, said, Log()) == "checkpoints/step-20.pt"
    restored = (worker_b / "checkpoints" / "step-20.pt").read_bytes()
    assert hashlib.sha256(restored).hexdigest() == row.sha256
    assert said.lines[-1] == "resuming from the checkpoint of step 20"


def test_a_damaged_object_in_the_bucket_falls_back_to_the_previous_checkpoint(
    owner: User, tmp_path: Path, bucket: str, moto_server: MotoServer
) -> None:
    claim = claimed(owner)
    worker_a = tmp_path / "a"
    write_checkpoint(claim, worker_a, 10)
    write_checkpoint(claim, worker_a, 20)
    moto_server.client().put_object(
        Bucket=bucket, Key=f"cp/checkpoints/{claim.run_id}/20/step-20.pt", Body=b"torn"
    )
    said = Said()
    assert (
        choose_checkpoint(claim.run_id, claim.attempt, tmp_path / "b", said, Log())
        == "checkpoints/step-10.pt"
    )
    assert (
        "checkpoint of step 20 is damaged in the store (sha256 mismatch); trying an older one" in said.lines
    )
    assert not (tmp_path / "b" / "checkpoints" / "step-20.pt").exists()


def test_retention_keeps_the_newest_and_the_one_the_model_came_from(
    owner: User, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer
) -> None:
    bucket = use_bucket(settings, monkeypatch, moto_server, moto_server.url, checkpoints_keep=2)
    claim = claimed(owner)
    directory = tmp_path / "run"
    write_checkpoint(claim, directory, 10)
    attempts.register_artifact(
        claim.run_id,
        claim.attempt,
        name="model.safetensors",
        kind="model",
        size=1,
        sha256="0" * 64,
        storage_key="x",
        metadata={"safetensors": {"step": "10"}},
    )
    for step in (20, 30, 40):
        write_checkpoint(claim, directory, step)
    kept = sorted(Checkpoint.objects.filter(run_id=claim.run_id).values_list("step", flat=True))
    assert kept == [10, 30, 40]
    assert objects(moto_server, bucket) == [
        f"cp/checkpoints/{claim.run_id}/{s}/step-{s}.pt" for s in (10, 30, 40)
    ]


def test_a_store_that_is_down_keeps_the_checkpoint_for_the_next_try(
    owner: User,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    fault_proxy: FaultProxy,
) -> None:
    use_bucket(settings, monkeypatch, moto_server, fault_proxy.url)
    claim = claimed(owner)
    fault_proxy.down = True
    with pytest.raises(StorageUnavailable):
        write_checkpoint(claim, tmp_path, 10)
    assert not Checkpoint.objects.filter(run_id=claim.run_id).exists()  # never registered half-stored
    fault_proxy.down = False
    assert write_checkpoint(claim, tmp_path, 10) is None
    assert Checkpoint.objects.get(run_id=claim.run_id).step == 10


def test_the_writer_keeps_files_in_order_while_the_store_is_down_and_stores_them_after(
    owner: User,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    fault_proxy: FaultProxy,
) -> None:
    use_bucket(settings, monkeypatch, moto_server, fault_proxy.url)
    claim = claimed(owner)
    writer = AttemptWriter(
        claim.run_id, claim.attempt, settings.CONTROLPLANE, structlog.get_logger("tests"), on_fenced_off=print
    )
    for step in (10, 20):
        (tmp_path / f"step-{step}.pt").write_bytes(b"w" * step)
        writer.pending_files.append({"type": "checkpoint", "path": f"step-{step}.pt", "step": step})
    (tmp_path / "model.safetensors").write_bytes(b"not a real model")
    writer.pending_files.append({"type": "artifact", "path": "model.safetensors", "kind": "model"})
    fault_proxy.down = True
    assert writer.register_files(tmp_path) is False  # kept, nothing registered
    assert len(writer.pending_files) == 3 and not Checkpoint.objects.filter(run_id=claim.run_id).exists()
    fault_proxy.down = False
    assert writer.register_files(tmp_path) is True
    assert writer.pending_files == []
    assert sorted(Checkpoint.objects.filter(run_id=claim.run_id).values_list("step", flat=True)) == [10, 20]
    artifact = Artifact.objects.get(run_id=claim.run_id)
    assert artifact.sha256 == hashlib.sha256(b"not a real model").hexdigest()


def test_an_artifact_stored_again_by_a_later_attempt_replaces_the_earlier_object(
    owner: User, tmp_path: Path, bucket: str, moto_server: MotoServer
) -> None:
    claim = claimed(owner)
    (tmp_path / "model.safetensors").write_bytes(b"first attempt")
    event = {"type": "artifact", "path": "model.safetensors", "kind": "model"}
    assert register_file(claim.run_id, claim.attempt, tmp_path, event, Said()) is None
    Run.objects.filter(pk=claim.run_id).update(status="queued")
    second = attempts.claim_run(claim.run_id, "worker-b")
    assert second is not None
    (tmp_path / "model.safetensors").write_bytes(b"second attempt")
    assert register_file(claim.run_id, second.attempt, tmp_path, event, Said()) is None
    assert objects(moto_server, bucket) == [f"cp/{claim.run_id}/2/model.safetensors"]
    assert Artifact.objects.get(run_id=claim.run_id).sha256 == hashlib.sha256(b"second attempt").hexdigest()


def test_a_store_slower_than_the_lease_keeps_the_attempt_alive_while_it_uploads(
    owner: User,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    fault_proxy: FaultProxy,
) -> None:
    """A store call blocks the watch loop (a 20 GiB checkpoint takes minutes): the lease is renewed
    from a thread meanwhile, so the reconciler never takes a busy attempt for a lost one."""
    use_bucket(settings, monkeypatch, moto_server, fault_proxy.url)
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "LEASE_SECONDS": 2.0, "HEARTBEAT_SECONDS": 0.5}
    claim = claimed(owner)
    writer = AttemptWriter(
        claim.run_id, claim.attempt, settings.CONTROLPLANE, structlog.get_logger("tests"), on_fenced_off=print
    )
    (tmp_path / "model.safetensors").write_bytes(b"slow" * 1000)
    writer.pending_files.append({"type": "artifact", "path": "model.safetensors", "kind": "model"})
    fault_proxy.delay_puts = 3.5  # longer than the whole lease
    started = timezone.now()
    assert writer.register_files(tmp_path) is True
    assert timezone.now() - started >= timedelta(seconds=3.5)
    run = Run.objects.get(pk=claim.run_id)
    # Renewed during the upload: without it the lease would have ended 2 s after the claim.
    assert run.lease_expires_at is not None and run.lease_expires_at > started + timedelta(seconds=3)
    assert attempts.expire_lease(claim.run_id, timezone.now()) is None  # nothing for the reconciler
    assert not writer.fenced_off and Artifact.objects.filter(run_id=claim.run_id).exists()
