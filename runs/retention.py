"""Checkpoint retention: keep a run's newest N checkpoints and the one its model came from.

CONTROLPLANE_CHECKPOINTS_KEEP (default 5 on a bucket, 0 = all on a local directory) bounds what a
long run leaves in the store. The checkpoint a model artifact was written at (the `step` in its
safetensors metadata) is kept too, so the model can be traced to, and training continued from,
its exact state.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from runs import lifecycle
from runs.attempts import StaleAttempt
from runs.models import Artifact, Checkpoint


def artifact_steps(run_id: int) -> set[int]:
    """The steps the run's artifacts were written at (from their safetensors metadata)."""
    steps = set()
    for metadata in Artifact.objects.filter(run_id=run_id).values_list("metadata", flat=True):
        step = _step_of(metadata)
        if step is not None:
            steps.add(step)
    return steps


def _step_of(metadata: Any) -> int | None:
    try:
        return int(metadata["safetensors"]["step"])
    except (KeyError, TypeError, ValueError):
        return None


def prune_checkpoints(run_id: int, attempt: int, keep: int | None = None) -> list[tuple[str, str]]:
    """Delete the rows of checkpoints beyond the newest `keep` (the setting by default), except the
    ones artifacts came from; returns their (storage_key, path) for the caller to delete once
    the rows are gone (an object without a row is garbage, a row without its object would be a
    broken promise). Fenced like every supervisor write (StaleAttempt)."""
    keep = settings.STORAGE.checkpoints_keep if keep is None else keep
    if keep <= 0:
        return []
    with transaction.atomic():
        if not lifecycle.held_by(run_id, attempt).select_for_update().exists():
            raise StaleAttempt(f"run {run_id} attempt {attempt} may no longer write")
        rows = list(Checkpoint.objects.filter(run_id=run_id).order_by("-step").values_list("pk", "step"))
        protected = artifact_steps(run_id)
        doomed = [pk for index, (pk, step) in enumerate(rows) if index >= keep and step not in protected]
        if not doomed:
            return []
        removed = list(Checkpoint.objects.filter(pk__in=doomed).values_list("storage_key", "path"))
        Checkpoint.objects.filter(pk__in=doomed).delete()
    return removed
