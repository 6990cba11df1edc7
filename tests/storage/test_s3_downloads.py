"""Downloads of artifacts kept in a bucket keep the promises of local ones (Range, ETag, 304,
416, HEAD, 410 when the object is gone), proxied by the web server or redirected to a
short-lived presigned URL; the preview reads only the safetensors header from the bucket."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from audit.models import AuditRecord
from runs.models import Artifact, Run
from runs.storage import store_artifact
from tests.storage.conftest import use_bucket
from tests.storage.s3server import MotoServer

pytestmark = pytest.mark.django_db
BODY = bytes(range(256)) * 8192  # 2 MiB


def _artifact(owner: User, name: str, data: bytes) -> Artifact:
    run = Run.objects.create(name="s3", owner=owner, program="scripted", queue="s3-downloads")
    stored = store_artifact(run.pk, 1, io.BytesIO(data), name)
    return Artifact.objects.create(
        run=run,
        attempt=1,
        name=name,
        kind="model",
        size=stored.size,
        sha256=stored.sha256,
        storage_key=stored.key,
    )


def _body(response: Any) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)()


def test_a_proxied_download_from_the_bucket_answers_ranges_and_etags(
    bucket: str, api: APIClient, owner: User
) -> None:
    artifact = _artifact(owner, "model.bin", BODY)
    url = f"/api/v1/artifacts/{artifact.pk}/download/"
    whole = api.get(url)
    assert whole.status_code == 200 and whole["Content-Length"] == str(len(BODY))
    assert whole["ETag"] == f'"{hashlib.sha256(BODY).hexdigest()}"'
    assert _body(whole) == BODY
    part = api.get(url, HTTP_RANGE="bytes=1000-1999")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 1000-1999/{len(BODY)}"
    assert _body(part) == BODY[1000:2000]
    tail = api.get(url, HTTP_RANGE="bytes=-5")
    assert _body(tail) == BODY[-5:]
    assert api.get(url, HTTP_IF_NONE_MATCH=whole["ETag"]).status_code == 304
    assert api.get(url, HTTP_RANGE=f"bytes={len(BODY)}-").status_code == 416
    head = api.head(url)
    assert head.status_code == 200 and head["Content-Length"] == str(len(BODY))
    statuses = [
        r.details["status"] for r in AuditRecord.objects.filter(action="artifact.download").order_by("id")
    ]
    assert statuses == [200, 206, 206]


def test_an_object_gone_from_the_bucket_is_a_410(
    bucket: str, api: APIClient, owner: User, moto_server: MotoServer
) -> None:
    artifact = _artifact(owner, "gone.bin", b"x" * 10)
    moto_server.client().delete_object(Bucket=bucket, Key=f"cp/{artifact.storage_key}")
    url = f"/api/v1/artifacts/{artifact.pk}/download/"
    assert api.get(url).status_code == 410
    assert api.head(url).status_code == 410


def test_a_presigned_download_redirects_after_authorizing_and_the_url_serves_ranges(
    settings: Any, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer, api: APIClient, owner: User
) -> None:
    use_bucket(
        settings, monkeypatch, moto_server, moto_server.url, presigned_downloads=True, presigned_seconds=60
    )
    artifact = _artifact(owner, "model weights.bin", BODY)
    url = f"/api/v1/artifacts/{artifact.pk}/download/"
    redirect = api.get(url)
    assert redirect.status_code == 302 and redirect["Cache-Control"] == "private, no-store"
    location = redirect["Location"]
    assert "X-Amz-Expires=60" in location and "X-Amz-Signature=" in location
    fetched = httpx.get(location, headers={"Range": "bytes=10-19"})
    assert fetched.status_code == 206 and fetched.content == BODY[10:20]
    whole = httpx.get(location)
    assert whole.content == BODY and "model%20weights.bin" in whole.headers["content-disposition"]
    # Still authorized and audited by the product, and 304 answered by it.
    assert api.get(url, HTTP_IF_NONE_MATCH=f'"{artifact.sha256}"').status_code == 304
    assert [
        r.details["status"] for r in AuditRecord.objects.filter(action="artifact.download").order_by("id")
    ] == [302]
    assert APIClient().get(url).status_code in {401, 403}


def test_the_preview_reads_the_header_from_the_bucket(bucket: str, api: APIClient, owner: User) -> None:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": {"step": "7"}}
    )
    data = struct.pack("<Q", len(header)) + header.encode() + b"\0" * 24
    artifact = _artifact(owner, "model.safetensors", data)
    preview = api.get(f"/api/v1/artifacts/{artifact.pk}/preview/")
    assert preview.status_code == 200, preview.content
    assert preview.json()["parameters"] == 6 and preview.json()["metadata"] == {"step": "7"}
