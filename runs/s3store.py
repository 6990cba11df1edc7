"""The S3 store: any S3-compatible service (AWS, GCS interoperability, MinIO, Ceph) through boto3.

boto3 reads the standard AWS variables itself (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or an instance role); nothing here names a credential.

- Uploads are streamed and multipart (8 MiB parts, a bounded number in memory); a file is hashed
  (sha256) and then uploaded with its parts read in parallel from the file, a stream is hashed
  while it is read. A multipart object becomes visible only when the upload completes, and a failed upload
  is aborted, so no key ever holds half an object; the caller registers the object only after
  the completed upload's size is confirmed by a HEAD.
- Every call goes through retries with jittered backoff (and botocore's own per-request retries)
  and a circuit breaker per bucket (`ops.breakers`), so a dead endpoint costs fast refusals.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import structlog
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ops.breakers import Breaker, BreakerOpen
from runs.blobstore import (
    CHUNK,
    HashingReader,
    ObjectMissing,
    StorageUnavailable,
    StoredObject,
    copy_hashed,
    hash_file,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

ATTEMPTS = 2  # whole operations; botocore retries each request up to 3 times inside
BACKOFF_BASE_SECONDS = 0.25
PART_BYTES = 8 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _transient(error: Exception) -> bool:
    """Errors of the service or the network (retried, trip the breaker); not a 4xx answer."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or code in {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}
    # S3UploadFailedError: s3transfer's wrapper of a failed part or PUT (its cause is a ClientError).
    return isinstance(error, BotoCoreError | OSError | S3UploadFailedError)


class S3Store:
    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", presigned_seconds: int = 300) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.presigned_seconds = presigned_seconds
        self.client = boto3.session.Session().client(
            "s3",
            config=Config(
                retries={"mode": "standard", "total_max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=16,
                signature_version="s3v4",  # presigned URLs too (SigV2 is refused by most services)
                # A custom endpoint (MinIO, Ceph, GCS) is addressed by path: it needs no
                # wildcard DNS name per bucket; AWS itself keeps virtual-hosted names.
                s3={"addressing_style": "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"},
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=8,
        )
        # Parts read from a stream wait in memory: at most this many, whatever the object's size
        # (s3transfer's setting; boto3's constructor does not take it).
        self.transfer.max_in_memory_upload_chunks = 6
        self.breaker = Breaker(f"storage:s3:{self.bucket}")

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or "\x00" in key or ".." in key.split("/"):
            raise ValueError(f"invalid storage key: {key!r}")
        return self.prefix + key

    def _call(self, what: str, function: Callable[[], T]) -> T:
        """`function` with retries (jittered exponential backoff) through the bucket's breaker."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self.breaker.call(function, counts_as_failure=_transient)
            except BreakerOpen as error:
                raise StorageUnavailable(str(error)) from error
            except Exception as error:
                if not _transient(error):
                    if isinstance(error, ClientError) and _code(error) in _MISSING:
                        raise ObjectMissing(what) from error
                    raise
                log.warning("storage_call_failed", call=what, attempt=attempt, error=str(error)[:200])
                if attempt == ATTEMPTS:
                    raise StorageUnavailable(f"object storage: {what}: {error}") from error
                time.sleep(random.uniform(0, BACKOFF_BASE_SECONDS * 2**attempt))  # noqa: S311 - jitter
        raise AssertionError("unreachable")

    # -- writes --------------------------------------------------------------------------

    def put(self, key: str, source: Path | BinaryIO) -> StoredObject:
        full = self._key(key)
        if isinstance(source, Path):
            return self._call(f"put {key}", lambda: self._put_file(key, full, source))
        try:  # a stream is read once: one try (botocore still retries each part)
            return self.breaker.call(
                lambda: self._put_stream(key, full, source), counts_as_failure=_transient
            )
        except BreakerOpen as error:
            raise StorageUnavailable(str(error)) from error
        except (BotoCoreError, ClientError, S3UploadFailedError) as error:
            raise StorageUnavailable(f"object storage: put {key}: {error}") from error

    def _put_file(self, key: str, full: str, path: Path) -> StoredObject:
        """A file: hashed, then uploaded with its parts read in parallel straight from the file
        (s3transfer's fastest path: no copy in memory). A file that changed meanwhile (size or
        mtime) is refused, so the sha256 registered is the one of the bytes stored."""
        before = path.stat()
        size, sha256 = hash_file(path)
        self.client.upload_file(str(path), self.bucket, full, Config=self.transfer)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (
            before.st_size,
            before.st_mtime_ns,
        ) or size != before.st_size:
            raise StorageUnavailable(f"{path.name} changed while it was stored; stored again later")
        self._confirm(key, full, size)
        return StoredObject(key, size, sha256)

    def _put_stream(self, key: str, full: str, stream: BinaryIO) -> StoredObject:
        reader = HashingReader(stream)
        # No seek on the reader: s3transfer reads it in order, part by part, hashed on the way.
        self.client.upload_fileobj(reader, self.bucket, full, Config=self.transfer)
        self._confirm(key, full, reader.size)
        return StoredObject(key, reader.size, reader.digest.hexdigest())

    def _confirm(self, key: str, full: str, size: int) -> None:
        """The completed object's size, read back, must be what was sent."""
        head = self.client.head_object(Bucket=self.bucket, Key=full)
        if int(head["ContentLength"]) != size:
            raise StorageUnavailable(f"{key}: stored {head['ContentLength']} bytes, sent {size}")

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    # -- reads ---------------------------------------------------------------------------

    def _get(self, key: str, start: int, length: int | None) -> Any:
        full = self._key(key)
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            arguments["Range"] = f"bytes={start}-{end}"
        return self._call(f"get {key}", lambda: self.client.get_object(**arguments))

    def read(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Opens the object now (ObjectMissing, StorageUnavailable), then yields its chunks."""
        if length == 0:
            return iter(())
        body = self._get(key, start, length)["Body"]
        return _chunks(body)

    def size(self, key: str) -> int | None:
        full = self._key(key)
        try:
            head = self._call(f"head {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        except ObjectMissing:
            return None
        return int(head["ContentLength"])

    def fetch(self, key: str, target: Path) -> StoredObject:
        """Download to `target` atomically, hashing on the way."""

        def download() -> StoredObject:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                size, sha256 = copy_hashed(body, target)
            finally:
                body.close()
            return StoredObject(key, size, sha256)

        return self._call(f"fetch {key}", download)

    def presigned_url(self, key: str, disposition: str) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(key),
                    "ResponseContentDisposition": disposition,
                    "ResponseContentType": "application/octet-stream",
                },
                ExpiresIn=self.presigned_seconds,
            )
        )

    def local_path(self, key: str) -> Path | None:
        return None


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        while chunk := body.read(CHUNK):
            yield chunk
    finally:
        body.close()
