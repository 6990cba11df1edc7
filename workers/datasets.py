"""Staging a run's dataset from an HTTP(S) source before the program starts.

Object stores are reached the same way, through presigned HTTPS URLs (S3, GCS and Azure all issue
them), which keeps credentials out of the worker. Every fetch has a timeout, bounded retries with
exponential backoff and jitter, and goes through a circuit breaker per source host. The file is
validated before training starts (not empty, under the size bound, valid UTF-8, the expected
sha256 when one is given), so a bad corpus fails the run in seconds as a `data` error instead of
minutes into training.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from django.conf import settings

from ops.breakers import Breaker, BreakerOpen

log = structlog.get_logger(__name__)
CHUNK = 1024 * 1024


class DatasetError(Exception):
    """The dataset itself is unusable: retrying the same source will not help."""


class SourceUnavailable(Exception):
    """The source could not be reached: a transient problem of the dependency."""


@dataclass(frozen=True)
class StagedDataset:
    path: Path
    size: int
    sha256: str


def _is_dependency_failure(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    return isinstance(error, OSError)


def _download(url: str, destination: Path, max_bytes: int, timeout: float) -> StagedDataset:
    partial = destination.with_name(destination.name + ".partial")
    request = urllib.request.Request(url, headers={"User-Agent": "controlplane-dataset-stager"})  # noqa: S310
    try:
        return _receive(request, partial, destination, max_bytes, timeout)
    finally:
        partial.unlink(missing_ok=True)


def _receive(
    request: urllib.request.Request, partial: Path, destination: Path, max_bytes: int, timeout: float
) -> StagedDataset:
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, partial.open("wb") as out:  # noqa: S310
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise DatasetError(f"the dataset is {int(declared)} bytes, over the {max_bytes}-byte bound")
        while chunk := response.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise DatasetError(f"the dataset exceeds the {max_bytes}-byte bound")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise DatasetError(
                    f"the dataset is not UTF-8 text (byte {size - len(chunk) + error.start})"
                ) from None
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DatasetError("the dataset ends inside a UTF-8 character") from None
    if size == 0:
        raise DatasetError("the dataset is empty")
    os.replace(partial, destination)
    return StagedDataset(destination, size, digest.hexdigest())


def stage_dataset(url: str, expected_sha256: str, destination: Path) -> StagedDataset:
    """Fetch, validate and place the dataset; raises DatasetError or SourceUnavailable."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise DatasetError(f"dataset_url must be an http(s) URL, got {url[:100]!r}")
    config = settings.CONTROLPLANE
    breaker = Breaker(f"dataset:{parts.hostname}")
    attempts = int(config["DATASET_RETRIES"])
    destination.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            staged = breaker.call(
                lambda: _download(
                    url,
                    destination,
                    int(config["DATASET_MAX_BYTES"]),
                    float(config["DATASET_TIMEOUT_SECONDS"]),
                ),
                counts_as_failure=_is_dependency_failure,
            )
        except BreakerOpen as error:
            raise SourceUnavailable(str(error)) from error
        except urllib.error.HTTPError as error:
            if not _is_dependency_failure(error):
                raise DatasetError(f"the source answered HTTP {error.code} for the dataset") from error
            last_error = error
        except OSError as error:
            last_error = error
        else:
            if expected_sha256 and staged.sha256 != expected_sha256.lower():
                staged.path.unlink()
                raise DatasetError(
                    f"dataset sha256 {staged.sha256} does not match the expected {expected_sha256}"
                )
            return staged
        log.warning("dataset_fetch_failed", host=parts.hostname, attempt=attempt, error=str(last_error)[:200])
        if attempt < attempts:
            delay = min(30.0, 0.5 * 2 ** (attempt - 1))
            time.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter, not cryptography
    raise SourceUnavailable(
        f"could not fetch the dataset from {parts.hostname} after {attempts} tries: {last_error}"
    )
