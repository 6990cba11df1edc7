"""Files of runs: paths inside a run directory, and the store that keeps artifacts and checkpoints.

Users never name a path: events name paths relative to the run directory (checked to stay
inside it, symlinks resolved), and downloads look artifacts up by id. The bytes live in the store
of CONTROLPLANE_STORAGE_URL (runs/blobstore.py): a local directory, or an S3 bucket that lets a
run resume on a worker that never saw it and the web serve downloads with no shared volume.

This module is the API other code calls (the supervisor, downloads, the tracking endpoints):
`store_artifact`, `open_artifact`, `artifact_size`, `store_checkpoint`, `fetch_checkpoint`,
`delete_object`. They raise `StorageUnavailable` (try later) and `ObjectMissing`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from runs.blobstore import (
    CHUNK,
    LocalStore,
    ObjectMissing,
    StorageUnavailable,
    StoredObject,
    get_store,
    hash_file,
    resolve_inside,
)

__all__ = [
    "CHUNK",
    "ObjectMissing",
    "StorageUnavailable",
    "StoredObject",
    "artifact_path",
    "artifact_size",
    "delete_object",
    "fetch_checkpoint",
    "hash_file",
    "open_artifact",
    "presigned_url",
    "resolve_inside",
    "run_dir",
    "store_artifact",
    "store_checkpoint",
]


def run_dir(run_id: int) -> Path:
    return Path(settings.RUNS_DIR) / str(run_id)


def store_artifact(run_id: int, attempt: int, source: Path | BinaryIO, name: str) -> StoredObject:
    """Write a file (or a stream, read once) into the store, hashing on the way; register the
    returned (key, size, sha256) with `runs.attempts.register_artifact` only after this returns:
    the object is complete and its size confirmed by then."""
    if not name or "/" in name or name in {".", ".."}:
        raise ValueError(f"invalid artifact name: {name!r}")
    return get_store().put(f"{run_id}/{attempt}/{name}", source)


def open_artifact(storage_key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Chunks of an artifact's bytes [start, start + length); opens the object at once (so a
    missing one raises ObjectMissing before the first chunk)."""
    return get_store().read(storage_key, start, length)


def artifact_size(storage_key: str) -> int | None:
    """The stored object's size, None when it is gone."""
    return get_store().size(storage_key)


def store_checkpoint(run_id: int, step: int, path: Path, relative: str) -> StoredObject:
    """A checkpoint the program wrote: hashed in place in the run directory on a local store
    (key ""; the directory is the store, as before), uploaded on a bucket."""
    store = get_store()
    if isinstance(store, LocalStore):
        size, sha256 = hash_file(path)
        return StoredObject("", size, sha256)
    return store.put(f"checkpoints/{run_id}/{step}/{Path(relative).name}", path)


def fetch_checkpoint(storage_key: str, target: Path) -> StoredObject:
    """Download a checkpoint into the run directory (atomically, hashed on the way)."""
    return get_store().fetch(storage_key, target)


def delete_object(storage_key: str) -> None:
    if storage_key:
        get_store().delete(storage_key)


def artifact_path(storage_key: str) -> Path:
    """The file of a local store's object (X-Accel-Redirect, tests); never a bucket's."""
    return LocalStore().path(storage_key)


def remove_run_files(run_id: int) -> None:
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def presigned_url(storage_key: str, disposition: str) -> str | None:
    """A short-lived GET URL of the object (a bucket only; None on a local store)."""
    return get_store().presigned_url(storage_key, disposition)
