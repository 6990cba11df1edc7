"""The files a program reports, on the local store (the default): retention deletes old
checkpoints from the run directory, and a file that cannot be deleted is said in the run's log,
never an error of the attempt (the row is gone: it costs space, never a wrong resume)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User

from runs import attempts
from runs.attempts import Claim
from runs.models import Artifact, Checkpoint, Run
from tests.workers.test_preparation import Said
from workers.files import register_file

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def local_store(settings: Any, tmp_path: Path) -> Path:
    """The local store in this test's directory, keeping the newest two checkpoints."""
    root = tmp_path / "artifacts"
    settings.STORAGE = dataclasses.replace(
        django_settings.STORAGE, kind="local", root=root, checkpoints_keep=2
    )
    settings.ARTIFACTS_DIR = root
    return root


def claimed(owner: User) -> Claim:
    run = Run.objects.create(name="files", owner=owner, program="scripted", queue="files-local")
    claim = attempts.claim_run(run.pk, "worker-a")
    assert claim is not None
    return claim


def checkpoint(claim: Claim, directory: Path, step: int, said: Said) -> str | None:
    path = directory / "checkpoints" / f"step-{step}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"weights {step}".encode())
    event = {"type": "checkpoint", "step": step, "path": f"checkpoints/step-{step}.pt"}
    return register_file(claim.run_id, claim.attempt, directory, event, said)


def test_retention_deletes_old_checkpoints_from_the_run_directory(
    owner: User, tmp_path: Path, local_store: Path
) -> None:
    claim, run_dir, said = claimed(owner), tmp_path / "run", Said()
    for step in (100, 200, 300, 400):
        assert checkpoint(claim, run_dir, step, said) is None
    steps = sorted(Checkpoint.objects.filter(run_id=claim.run_id).values_list("step", flat=True))
    assert steps == [300, 400]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-300.pt", "step-400.pt"]


def test_a_checkpoint_that_cannot_be_deleted_is_said_and_the_run_goes_on(
    owner: User, tmp_path: Path, local_store: Path
) -> None:
    claim, run_dir, said = claimed(owner), tmp_path / "run", Said()
    assert checkpoint(claim, run_dir, 100, said) is None
    # The oldest checkpoint's file turned into a directory: unlinking it fails (an OSError).
    old = run_dir / "checkpoints" / "step-100.pt"
    old.unlink()
    (old / "inside").mkdir(parents=True)
    for step in (200, 300):
        assert checkpoint(claim, run_dir, step, said) is None
    assert sorted(Checkpoint.objects.filter(run_id=claim.run_id).values_list("step", flat=True)) == [200, 300]
    assert any(
        "could not delete the old checkpoint checkpoints/step-100.pt" in str(line) for line in said.lines
    )


def test_a_replaced_artifact_that_cannot_be_deleted_is_said(
    owner: User, tmp_path: Path, local_store: Path
) -> None:
    claim, run_dir, said = claimed(owner), tmp_path / "run", Said()
    run_dir.mkdir()
    (run_dir / "model.bin").write_bytes(b"first")
    event = {"type": "artifact", "path": "model.bin", "kind": "model"}
    assert register_file(claim.run_id, claim.attempt, run_dir, event, said) is None
    first_key = Artifact.objects.get(run_id=claim.run_id).storage_key
    # The first attempt's object became a directory: the second attempt's delete of it fails.
    stored = local_store / first_key
    stored.unlink()
    (stored / "inside").mkdir(parents=True)
    Run.objects.filter(pk=claim.run_id).update(status="queued")
    second = attempts.claim_run(claim.run_id, "worker-b")
    assert second is not None
    (run_dir / "model.bin").write_bytes(b"second")
    assert register_file(claim.run_id, second.attempt, run_dir, event, said) is None
    artifact = Artifact.objects.get(run_id=claim.run_id)
    assert (artifact.attempt, (local_store / artifact.storage_key).read_bytes()) == (2, b"second")
    assert any("could not delete the replaced model.bin" in str(line) for line in said.lines)
