"""Where artifact and checkpoint bytes live: a local directory (the default) or an S3 bucket.

`get_store()` answers the store `settings.STORAGE` names (CONTROLPLANE_STORAGE_URL). Both kinds
keep the same promises: a write is streamed and hashed while it is read, and atomic (an object
appears whole under its key or not at all, so a half-written one is never registered); a read
streams chunks of a byte range (memory stays flat whatever the size).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from django.conf import settings

from ops.configuration import ConfigError

CHUNK = 1024 * 1024


class StoredObject(NamedTuple):
    """An object written whole: its key in the store, its size and the sha256 of its bytes."""

    key: str
    size: int
    sha256: str


class StorageUnavailable(Exception):
    """The store could not be reached (or its circuit breaker is open): try again later."""


class ObjectMissing(Exception):
    """No object under that key."""


class HashingReader:
    """Wraps a binary stream: counts and hashes what is read through it (one pass, no copy)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


class BlobStore(Protocol):
    """What artifacts and checkpoints need of a store; keys are relative, '/'-separated."""

    kind: str

    def put(self, key: str, source: Path | BinaryIO) -> StoredObject: ...

    def read(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]: ...

    def size(self, key: str) -> int | None: ...

    def fetch(self, key: str, target: Path) -> StoredObject: ...

    def delete(self, key: str) -> None: ...

    def presigned_url(self, key: str, disposition: str) -> str | None: ...

    def local_path(self, key: str) -> Path | None: ...


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
    """(size, sha256) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def copy_hashed(reader: BinaryIO | HashingReader, target: Path) -> tuple[int, str]:
    """Stream `reader` into `target` atomically (a partial file, fsync, rename); (size, sha256)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with temporary.open("wb") as writer:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                size += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return size, digest.hexdigest()


class LocalStore:
    """Today's behaviour: files under ARTIFACTS_DIR (read when called, so tests may move it)."""

    kind = "local"

    def path(self, key: str) -> Path:
        path = resolve_inside(Path(settings.ARTIFACTS_DIR), key)
        if path is None:
            raise ValueError(f"storage key escapes the artifact store: {key!r}")
        return path

    def put(self, key: str, source: Path | BinaryIO) -> StoredObject:
        if isinstance(source, Path):
            with source.open("rb") as reader:
                size, sha256 = copy_hashed(reader, self.path(key))
        else:
            size, sha256 = copy_hashed(source, self.path(key))
        return StoredObject(key, size, sha256)

    def read(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            handle = self.path(key).open("rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        return _read_range(handle, start, length)

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def fetch(self, key: str, target: Path) -> StoredObject:
        try:
            with self.path(key).open("rb") as reader:
                size, sha256 = copy_hashed(reader, target)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        return StoredObject(key, size, sha256)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, disposition: str) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        return self.path(key)


def _read_range(handle: BinaryIO, start: int, length: int | None) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


_stores: dict[object, BlobStore] = {}


def get_store() -> BlobStore:
    """The store of `settings.STORAGE`, built once per configuration (one S3 client per process)."""
    config = settings.STORAGE
    store = _stores.get(config)
    if store is None:
        if config.kind == "local":
            store = LocalStore()
        elif config.kind == "s3":
            # Imported here so a local-only process never loads boto3 (its import costs ~0.3 s).
            from runs.s3store import S3Store

            store = S3Store(config.bucket, config.prefix, config.presigned_seconds)
        else:
            raise ConfigError(f"CONTROLPLANE_STORAGE_URL: unknown store kind {config.kind!r}")
        _stores[config] = store
    return store
