"""What a supervisor does before it starts a program: pick the checkpoint to resume from, and
stage the run's dataset while keeping the lease."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import DatabaseError, close_old_connections, connection

from runs import attempts
from runs.attempts import Claim, Outcome, StaleAttempt, system_line
from runs.models import Checkpoint, ErrorKind, Run, RunStatus
from runs.storage import ObjectMissing, fetch_checkpoint, hash_file, resolve_inside
from vault.services import SecretUnavailable, resolve_for_run
from workers.datasets import DatasetError, StagedDataset, stage_dataset

Say = Callable[[tuple[datetime, str, str]], None]
DATASET_PATH = "dataset/corpus.txt"


def choose_checkpoint(run_id: int, attempt: int, directory: Path, say: Say, log: Any) -> str | None:
    """The newest checkpoint whose bytes still match its sha256, as a run-relative path; one kept
    in a bucket is downloaded first when the run directory lacks it. Raises StorageUnavailable."""
    for checkpoint in attempts.resume_candidates(run_id):
        path = resolve_inside(directory, checkpoint.path)
        problem = None
        if path is None:
            problem = "is missing"
        elif checkpoint.storage_key and not _matches(path, checkpoint):
            # In a bucket: this worker may never have seen the run (another run directory).
            problem = _download(checkpoint, path, say)
        elif not path.is_file():
            problem = "is missing"
        elif not _matches(path, checkpoint):
            problem = "is damaged (sha256 mismatch)"
        if problem is None:
            attempts.note_resume(run_id, attempt, checkpoint.step)
            say(system_line(f"resuming from the checkpoint of step {checkpoint.step}"))
            log.info("resuming", step=checkpoint.step, path=checkpoint.path)
            return checkpoint.path
        log.warning("checkpoint_unusable", step=checkpoint.step, problem=problem)
        say(system_line(f"checkpoint of step {checkpoint.step} {problem}; trying an older one"))
    return None


def _matches(path: Path, checkpoint: Checkpoint) -> bool:
    return path.is_file() and hash_file(path) == (checkpoint.size, checkpoint.sha256)


def _download(checkpoint: Checkpoint, path: Path, say: Say) -> str | None:
    """Fetch a checkpoint from the store into the run directory; why it is unusable, or None.

    Raises StorageUnavailable: the attempt ends (and is retried) rather than resume from an
    older checkpoint than it could."""
    say(system_line(f"downloading the checkpoint of step {checkpoint.step} ({checkpoint.size} bytes)"))
    try:
        stored = fetch_checkpoint(checkpoint.storage_key, path)
    except ObjectMissing:
        return "is missing from the store"
    if (stored.size, stored.sha256) != (checkpoint.size, checkpoint.sha256):
        path.unlink(missing_ok=True)
        return "is damaged in the store (sha256 mismatch)"
    return None


def stage_run_dataset(
    run_id: int, claim: Claim, directory: Path, heartbeat_every: float, say: Say
) -> tuple[str | None, Outcome | None]:
    """Fetch and validate the run's `dataset_url`, if any, renewing the lease meanwhile.

    Returns the run-relative path of the staged file, or the outcome that ends the attempt.
    """
    url = claim.params.get("dataset_url")
    if not isinstance(url, str) or not url:
        return None, None
    expected = str(claim.params.get("dataset_sha256") or "")
    # The breaker is keyed by owner too, so one user's bad source never fails another's runs.
    owner_id = Run.objects.filter(pk=run_id).values_list("owner_id", flat=True).first()
    outcome: list[StagedDataset | Exception] = []

    def fetch() -> None:
        try:
            outcome.append(stage_dataset(url, expected, directory / DATASET_PATH, owner_id=owner_id))
        except Exception as error:  # handed back to the supervisor, which classifies it
            outcome.append(error)
        finally:
            connection.close()  # this thread's own connection (the breaker's reads and writes)

    worker = threading.Thread(target=fetch, name=f"run-{run_id}-dataset", daemon=True)
    worker.start()
    cancelled = False
    while worker.is_alive():
        worker.join(timeout=heartbeat_every)
        try:
            cancelled = cancelled or attempts.renew_lease(run_id, claim.attempt) == RunStatus.CANCELLING
        except (StaleAttempt, DatabaseError):
            close_old_connections()
    result = outcome[0]
    if cancelled:
        return None, Outcome(
            RunStatus.CANCELLED, None, ErrorKind.CANCELLED, "cancelled", "cancelled while staging the dataset"
        )
    if isinstance(result, DatasetError):
        return None, Outcome(RunStatus.FAILED, None, ErrorKind.DATA, "invalid_dataset", f"dataset: {result}")
    if isinstance(result, Exception):
        return None, Outcome(
            RunStatus.FAILED, None, ErrorKind.INFRASTRUCTURE, "dataset_unavailable", f"dataset: {result}"
        )
    say(system_line(f"dataset staged: {result.size} bytes, sha256 {result.sha256}"))
    return DATASET_PATH, None


def resolve_run_secrets(claim: Claim) -> tuple[dict[str, str], Outcome | None]:
    """The values of the secrets the run names, checked again against its owner now; or the
    outcome that ends the attempt (a withdrawn secret fails the run, a worker without the key
    fails this attempt only, so another worker may try)."""
    if not claim.secrets:
        return {}, None
    owner = Run.objects.select_related("owner").get(pk=claim.run_id).owner
    try:
        values = resolve_for_run(run_id=claim.run_id, attempt=claim.attempt, owner=owner, names=claim.secrets)
    except SecretUnavailable as error:
        kind = ErrorKind.INFRASTRUCTURE if error.transient else ErrorKind.CONFIG
        return {}, Outcome(RunStatus.FAILED, None, kind, error.code, str(error))
    return values, None
