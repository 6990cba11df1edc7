"""Registering the files a program reports: checkpoints and artifacts go to the store
(CONTROLPLANE_STORAGE_URL) and are registered only once stored whole, with their sha256.

Events name paths relative to the run directory; anything that resolves outside it (symlinks
included) is refused, so a program cannot make the control plane read or publish another file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runs import attempts
from runs.models import Artifact
from runs.retention import prune_checkpoints
from runs.safetensors_header import artifact_metadata
from runs.storage import (
    ObjectMissing,
    StorageUnavailable,
    delete_object,
    resolve_inside,
    store_artifact,
    store_checkpoint,
)
from workers.preparation import Say


def register_file(run_id: int, attempt: int, directory: Path, event: dict[str, Any], say: Say) -> str | None:
    """Register one checkpoint or artifact event; a message when the event is refused.

    Raises DatabaseError and StorageUnavailable (the caller keeps the event for the next try) and
    StaleAttempt.
    """
    relative = str(event["path"])
    path = resolve_inside(directory, relative)
    if path is None:
        return f"path {relative[:200]!r} is outside the run directory"
    if not path.is_file():
        return f"{relative[:200]!r} is not a file"
    try:
        if event["type"] == "checkpoint":
            _store_checkpoint(run_id, attempt, directory, path, int(event["step"]), say)
            return None
        _store_artifact(run_id, attempt, path, event, say)
    except ObjectMissing as error:
        return f"could not store {relative[:200]!r}: {error}"
    except OSError as error:
        return f"could not read {relative[:200]!r}: {error.strerror or error}"
    return None


def _store_checkpoint(run_id: int, attempt: int, directory: Path, path: Path, step: int, say: Say) -> None:
    relative = str(path.relative_to(directory.resolve()))
    # Uploaded (on a bucket) before it is registered: a resume never meets a half-stored one.
    stored = store_checkpoint(run_id, step, path, relative)
    attempts.register_checkpoint(run_id, attempt, step, relative, stored.size, stored.sha256, stored.key)
    for storage_key, old_path in prune_checkpoints(run_id, attempt):
        try:
            if storage_key:
                delete_object(storage_key)
            else:  # a local store: the run directory's file is the checkpoint
                old = resolve_inside(directory, old_path)
                if old is not None:
                    old.unlink(missing_ok=True)
        except (StorageUnavailable, OSError) as error:
            # The row is gone already; an object left behind costs space, never a wrong resume.
            say(attempts.system_line(f"could not delete the old checkpoint {old_path}: {error}"))


def _store_artifact(run_id: int, attempt: int, path: Path, event: dict[str, Any], say: Say) -> None:
    name = path.name
    kind = event.get("kind") if isinstance(event.get("kind"), str) else "file"
    storage_key, size, sha256 = store_artifact(run_id, attempt, path, name)
    # An earlier attempt's object of the same name is replaced (its key names that attempt).
    replaced = Artifact.objects.filter(run_id=run_id, name=name).values_list("storage_key", flat=True).first()
    attempts.register_artifact(
        run_id,
        attempt,
        name=name,
        kind=str(kind),
        size=size,
        sha256=sha256,
        storage_key=storage_key,
        metadata=artifact_metadata(path),
    )
    say(attempts.system_line(f"artifact {name} stored ({size} bytes, sha256 {sha256})"))
    if replaced and replaced != storage_key:
        try:
            delete_object(replaced)
        except (StorageUnavailable, OSError) as error:  # left behind: space, never a wrong download
            say(attempts.system_line(f"could not delete the replaced {name}: {error}"))
