"""Staging a run's dataset from an HTTP(S) source before the program starts.

Object stores are reached the same way, through presigned HTTPS URLs (S3, GCS and Azure all issue
them), which keeps credentials out of the worker. Every fetch has a timeout, bounded retries with
exponential backoff and jitter, and goes through a circuit breaker per (run owner, source host).
Only allowed addresses are fetched (ops.netguard: public unicast, or an admin-listed network),
over a connection pinned to the checked address (workers.pinned_http). The file is
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
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from django.conf import settings

from ops.breakers import Breaker, BreakerOpen
from ops.netguard import REFUSED, AddressRefused, check_url
from runs.dataset_params import SHA256
from workers.pinned_http import open_checked

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


class SourceHTTPError(OSError):
    """The source answered with an HTTP error status."""

    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


def _is_dependency_failure(error: Exception) -> bool:
    if isinstance(error, SourceHTTPError):
        return error.code >= 500 or error.code == 429
    # A refused address is the URL's fault, not the source's: it must not open a breaker.
    return isinstance(error, OSError | HTTPException) and not isinstance(error, AddressRefused)


def _download(url: str, destination: Path, max_bytes: int, timeout: float) -> StagedDataset:
    partial = destination.with_name(destination.name + ".partial")
    allowed = getattr(settings, "DATASET_ALLOWED_NETWORKS", ())
    try:
        with open_checked(url, timeout, allowed) as (response, status):
            if status >= 400:
                raise SourceHTTPError(status)
            return _receive(response, partial, destination, max_bytes)
    finally:
        partial.unlink(missing_ok=True)


def _receive(response: HTTPResponse, partial: Path, destination: Path, max_bytes: int) -> StagedDataset:
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    with partial.open("wb") as out:
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


def breaker_name(owner_id: int | None, host: str) -> str:
    """One breaker per (run owner, source host): a user whose URLs fail opens only their own,
    never one that would fail another user's runs fetching from the same host."""
    return f"dataset:{owner_id if owner_id is not None else '-'}:{host}"


def _check_target(url: str, expected_sha256: str) -> str:
    """The host of a URL that may be fetched; DatasetError for one that may never be."""
    problem = check_url(url, getattr(settings, "DATASET_ALLOWED_NETWORKS", ()))
    if problem == REFUSED:
        raise DatasetError(f"dataset_url {REFUSED}")
    if problem is not None:
        raise DatasetError(f"dataset_url {problem}")
    if expected_sha256 and not SHA256.fullmatch(expected_sha256):
        raise DatasetError("dataset_sha256 must be 64 hexadecimal characters")
    return urlsplit(url).hostname or ""


def _fetch_once(breaker: Breaker, url: str, destination: Path) -> StagedDataset:
    config = settings.CONTROLPLANE
    return breaker.call(
        lambda: _download(
            url, destination, int(config["DATASET_MAX_BYTES"]), float(config["DATASET_TIMEOUT_SECONDS"])
        ),
        counts_as_failure=_is_dependency_failure,
    )


def stage_dataset(
    url: str, expected_sha256: str, destination: Path, *, owner_id: int | None = None
) -> StagedDataset:
    """Fetch, validate and place the dataset; raises DatasetError or SourceUnavailable."""
    host = _check_target(url, expected_sha256)
    breaker = Breaker(breaker_name(owner_id, host))
    attempts = int(settings.CONTROLPLANE["DATASET_RETRIES"])
    destination.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            staged = _fetch_once(breaker, url, destination)
        except BreakerOpen as error:
            raise SourceUnavailable(str(error)) from error
        except AddressRefused:
            # Refused before connecting (a name resolving inward, or a redirect there); no
            # address, port or answer is named, so the text maps nothing of the network.
            raise DatasetError(f"dataset_url {REFUSED}") from None
        except SourceHTTPError as error:
            if not _is_dependency_failure(error):
                raise DatasetError(f"the source answered HTTP {error.code} for the dataset") from error
            last_error = error
        except (OSError, HTTPException) as error:
            last_error = error
        else:
            if expected_sha256 and staged.sha256 != expected_sha256.lower():
                staged.path.unlink()
                raise DatasetError(
                    f"dataset sha256 {staged.sha256} does not match the expected {expected_sha256}"
                )
            return staged
        log.warning("dataset_fetch_failed", host=host, attempt=attempt, error=str(last_error)[:200])
        if attempt < attempts:
            delay = min(30.0, 0.5 * 2 ** (attempt - 1))
            time.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter, not cryptography
    raise SourceUnavailable(f"could not fetch the dataset from {host} after {attempts} tries: {last_error}")
