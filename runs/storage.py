"""Files of runs: paths inside a run directory, and the artifact store.

Users never name a path: events name paths relative to the run directory (checked to stay
inside it, symlinks resolved), and downloads look artifacts up by id.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from django.conf import settings

CHUNK = 1024 * 1024


def run_dir(run_id: int) -> Path:
    return Path(settings.RUNS_DIR) / str(run_id)


def resolve_inside(base: Path, relative: str) -> Path | None:
    """`relative` resolved under `base`, or None when it points outside (.., absolute, symlink)."""
    if not relative or "\x00" in relative:
        return None
    base = base.resolve()
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        return None
    return candidate


def hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def store_artifact(run_id: int, attempt: int, source: Path, name: str) -> tuple[str, int, str]:
    """Copy a file into the artifact store, hashing on the way; returns (storage key, size, sha256)."""
    storage_key = f"{run_id}/{attempt}/{name}"
    target = artifact_path(storage_key)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as reader, temporary.open("wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(temporary, target)
    return storage_key, size, digest.hexdigest()


def artifact_path(storage_key: str) -> Path:
    root = Path(settings.ARTIFACTS_DIR)
    path = resolve_inside(root, storage_key)
    if path is None:
        raise ValueError(f"storage key escapes the artifact store: {storage_key!r}")
    return path


def remove_run_files(run_id: int) -> None:
    shutil.rmtree(run_dir(run_id), ignore_errors=True)
