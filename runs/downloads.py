"""Artifact downloads: streamed in chunks from an async iterator, with Range and ETag.

Django's FileResponse under ASGI reads a whole file into memory before sending it (measured: a
1 GiB download took the server from 57 to 1,088 MiB) and ignores Range, so this view streams
itself. Behind nginx, CONTROLPLANE_X_ACCEL_PREFIX hands the transfer to the proxy instead: the
view authorizes, audits and answers 304/416 itself, then names the file in `X-Accel-Redirect` and
nginx sends it with sendfile (zero-copy, Range included), which no Python server can match.
The bytes come from the store (runs/blobstore.py): a local directory, or a bucket read with a
ranged GET (proxied, same promises) or, with CONTROLPLANE_STORAGE_PRESIGNED_DOWNLOADS, a redirect
to a short-lived presigned URL after the same authorization, audit and 304 answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_safe

from accounts.http import http_principal, refusal
from accounts.policy import Action
from audit import chain as audit
from runs.models import Artifact
from runs.selectors import access_artifact
from runs.storage import (
    ObjectMissing,
    StorageUnavailable,
    artifact_path,
    artifact_size,
    open_artifact,
    presigned_url,
)

CHUNK = 512 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_URI_PREFIX = re.compile(r"/[A-Za-z0-9._~/-]*/")


def check_x_accel_prefix() -> None:
    """CONTROLPLANE_X_ACCEL_PREFIX is empty or a URI path between slashes (nginx's location), and
    only used with a local store (nginx sends files it can read, not a bucket's objects)."""
    prefix = settings.X_ACCEL_PREFIX
    if prefix and settings.STORAGE.kind != "local":
        raise ImproperlyConfigured("CONTROLPLANE_X_ACCEL_PREFIX needs a local CONTROLPLANE_STORAGE_URL")
    if prefix and not _URI_PREFIX.fullmatch(prefix):
        raise ImproperlyConfigured(
            f"CONTROLPLANE_X_ACCEL_PREFIX must be a URI path that starts and ends with '/', not {prefix!r}"
        )


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive) for a satisfiable single range, None for no range, "invalid" else.

    Multi-range requests are answered with the whole file (allowed by RFC 9110).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None if "," in header else "invalid"
    first, last = match.groups()
    if first == "" and last == "":
        return "invalid"
    if first == "":
        length = int(last)
        if length == 0:
            return "invalid"
        return max(0, size - length), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        return "invalid"
    return start, end


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The store's chunks, each read in a thread so the event loop never waits on disk or S3."""
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


def _find(request: HttpRequest, artifact_id: int) -> tuple[Artifact, Any] | HttpResponse:
    principal = http_principal(request)
    refused = refusal(principal, Action.RUN_READ)
    if refused is not None:
        return refused
    try:
        artifact = access_artifact(principal, artifact_id)
    except Http404:
        return JsonResponse({"detail": "Not found."}, status=404)
    if settings.STORAGE.kind == "local" and not artifact_path(artifact.storage_key).is_file():
        return _gone()
    return artifact, principal.user


def _gone() -> JsonResponse:
    return JsonResponse({"detail": "The artifact's file is missing from storage."}, status=410)


def _unavailable(error: Exception) -> JsonResponse:
    response = JsonResponse({"detail": f"Object storage is unavailable: {error}"}, status=503)
    response["Retry-After"] = "30"
    return response


def _open(key: str, start: int, length: int, method: str) -> Iterator[bytes] | HttpResponse:
    """The body's chunks (opened now: a missing object is a 410, a dead store a 503)."""
    try:
        if method == "GET":
            return open_artifact(key, start, length)
        if settings.STORAGE.kind != "local" and artifact_size(key) is None:
            return _gone()
    except ObjectMissing:
        return _gone()
    except StorageUnavailable as error:
        return _unavailable(error)
    return iter(())


def _audit_download(user: Any, artifact: Artifact, status: int, content_range: str) -> None:
    details = {"run_id": artifact.run_id, "name": artifact.name, "sha256": artifact.sha256, "status": status}
    if content_range:
        details["range"] = content_range
    audit.record("artifact.download", actor=user, target=artifact, details=details)


@require_safe
async def download_artifact(request: HttpRequest, artifact_id: int) -> HttpResponseBase:
    found = await sync_to_async(_find)(request, artifact_id)
    if isinstance(found, HttpResponse):
        return found
    artifact, user = found
    size = artifact.size
    etag = f'"{artifact.sha256}"'
    disposition = f"attachment; filename*=UTF-8''{quote(artifact.name)}"
    if etag in request.headers.get("If-None-Match", ""):
        not_modified = HttpResponse(status=304)
        not_modified["ETag"] = etag
        return not_modified
    wanted = parse_range(request.headers.get("Range"), size)
    if request.headers.get("If-Range") not in (None, etag):
        wanted = None
    if wanted == "invalid":
        refused = HttpResponse(status=416)
        refused["Content-Range"] = f"bytes */{size}"
        return refused
    start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
    length = max(0, end - start + 1)
    status = 206 if isinstance(wanted, tuple) else 200
    response: HttpResponse | StreamingHttpResponse
    if settings.STORAGE.presigned_downloads:
        return await _redirect(request, artifact, user, disposition)
    if settings.X_ACCEL_PREFIX:
        # nginx serves the bytes, the Range and Content-Length from the original request; it keeps
        # our ETag for If-Range through `add_header ETag $upstream_http_etag` (deploy/nginx/).
        response = HttpResponse(status=status)
        response["X-Accel-Redirect"] = settings.X_ACCEL_PREFIX + quote(artifact.storage_key)
        response["X-Accel-Buffering"] = "no"
    else:
        chunks = await sync_to_async(_open)(artifact.storage_key, start, length, request.method or "GET")
        if isinstance(chunks, HttpResponse):
            return chunks
        response = StreamingHttpResponse(_stream(chunks), status=status)
        response["Content-Length"] = str(length)
    response["Content-Type"] = "application/octet-stream"
    response["Content-Disposition"] = disposition
    response["ETag"] = etag
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-transform"
    content_range = f"bytes {start}-{end}/{size}" if isinstance(wanted, tuple) else ""
    if content_range and not settings.X_ACCEL_PREFIX:
        response["Content-Range"] = content_range
    if request.method == "GET":
        # One record per request that sends bytes (200 or 206); a HEAD, a 304 or a 416 sends none.
        await sync_to_async(_audit_download)(user, artifact, status, content_range)
    return response


async def _redirect(
    request: HttpRequest, artifact: Artifact, user: Any, disposition: str
) -> HttpResponseBase:
    """A short-lived presigned URL of the object (CONTROLPLANE_STORAGE_PRESIGNED_DOWNLOADS): the
    bucket sends the bytes and answers Range itself; this view still authorizes and audits."""
    url = await sync_to_async(presigned_url)(artifact.storage_key, disposition)
    response = HttpResponse(status=302)
    response["Location"] = str(url)  # a bucket always has one (checked at start)
    response["ETag"] = f'"{artifact.sha256}"'
    response["Cache-Control"] = "private, no-store"
    if request.method == "GET":
        await sync_to_async(_audit_download)(user, artifact, 302, "")
    return response
