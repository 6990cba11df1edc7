"""Tracking mode's artifact upload: a file sent over HTTP into an external run's artifacts.

The body is received into a temporary file (hashed on the way in, bounded), checked against the
sha256 the client said it sent, and only then put into the store where a worker puts a program's
artifacts (runs/storage.store_artifact: `<run>/<attempt>/<name>`, a directory or a bucket, so the
web needs no volume shared with anyone) and registered (runs.attempts.register_artifact, fenced
like a supervisor's). A `.safetensors` file's header is read (size-capped, no torch) for its
metadata, as the supervisor does.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from audit import chain as audit
from runs.attempts import StaleAttempt, register_artifact
from runs.models import Artifact, Run, RunKind
from runs.safetensors_header import artifact_metadata
from runs.storage import CHUNK, StorageUnavailable, delete_object, store_artifact
from runs.tracking import ReportError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def do_upload_artifact(
    run: Run,
    name: str,
    stream: Any,
    *,
    expected_sha256: str,
    kind: str,
    limit: int,
    actor: AbstractBaseUser | None,
) -> Artifact:
    """Store `stream` (read in chunks, at most `limit` bytes) as artifact `name` of `run`."""
    errors: dict[str, str] = {}
    if not _NAME.match(name):
        errors["name"] = "letters, digits, '.', '_' and '-', at most 200, not starting with '.'"
    expected = expected_sha256.strip().lower()
    if not _SHA256.match(expected):
        errors["X-Content-SHA256"] = "the file's sha256, 64 hex digits, is required"
    if run.kind != RunKind.EXTERNAL:
        raise ReportError(409, {"detail": f"run {run.pk} is not an external run", "code": "not_external"})
    if errors:
        raise ReportError(400, errors)
    # On the web's own data directory: /tmp of a container is often small, and a model is not.
    Path(settings.DATA_DIR).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=settings.DATA_DIR) as directory:
        received = Path(directory) / name
        size = _receive(stream, received, expected, limit)
        metadata = artifact_metadata(received)  # named as the artifact
        try:
            stored = store_artifact(run.pk, run.attempt, received, name)
        except StorageUnavailable as error:
            raise ReportError(
                503, {"detail": f"the artifact store is unavailable: {error}", "code": "storage_unavailable"}
            ) from None
    if (stored.size, stored.sha256) != (size, expected):  # the store hashed what it stored
        delete_object(stored.key)
        raise ReportError(
            503, {"detail": "the stored artifact did not verify; send it again", "code": "retry"}
        )
    try:
        return _register(run, name, kind, size, expected, stored.key, metadata, actor)
    except ReportError:  # the run ended meanwhile: nothing refers to the object
        delete_object(stored.key)
        raise


def _receive(stream: Any, target: Path, expected: str, limit: int) -> int:
    """Copy the body into `target`, at most `limit` bytes; its size, once its sha256 is `expected`."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as writer:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise ReportError(
                    413, {"detail": f"an artifact is larger than {limit} bytes", "code": "too_large"}
                )
            digest.update(chunk)
            writer.write(chunk)
    if digest.hexdigest() != expected:
        raise ReportError(
            400, {"X-Content-SHA256": f"the body's sha256 is {digest.hexdigest()}, not {expected}"}
        )
    return size


def _register(
    run: Run,
    name: str,
    kind: str,
    size: int,
    sha256: str,
    storage_key: str,
    metadata: dict[str, Any],
    actor: AbstractBaseUser | None,
) -> Artifact:
    try:
        with transaction.atomic():
            artifact = register_artifact(
                run.pk,
                run.attempt,
                name=name,
                kind=(kind or "file")[:32],
                size=size,
                sha256=sha256,
                storage_key=storage_key,
                metadata=metadata,
            )
            audit.record(
                "artifact.upload",
                actor=actor,
                target=run,
                details={"name": name, "size": size, "sha256": sha256},
            )
    except StaleAttempt:
        raise ReportError(
            409, {"detail": f"run {run.pk} is no longer running", "code": "not_running"}
        ) from None
    return artifact
