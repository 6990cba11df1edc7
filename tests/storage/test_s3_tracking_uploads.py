"""Tracking mode's artifact upload goes into the same store as a worker's: with a bucket, the
object is in the bucket (the web keeps nothing on its disk), verified, downloadable; a bucket
that is down is a 503 with nothing registered."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from runs.models import Artifact
from tests.api.test_tracking import bearer, start
from tests.storage.conftest import use_bucket
from tests.storage.s3server import MotoServer
from tests.storage.test_s3_downloads import _body

pytestmark = pytest.mark.django_db
DATA = bytes(range(256)) * 4096  # 1 MiB


def _put(client: APIClient, run_id: int, data: bytes) -> Any:
    return client.generic(
        "PUT",
        f"/api/v1/runs/{run_id}/artifacts/model.bin?kind=model",
        data,  # type: ignore[arg-type]  # a binary body: the test client sends bytes as they are
        content_type="application/octet-stream",
        HTTP_X_CONTENT_SHA256=hashlib.sha256(data).hexdigest(),
    )


def test_an_uploaded_artifact_lands_in_the_bucket_and_downloads_from_it(
    bucket: str, api: APIClient, owner: User, moto_server: MotoServer
) -> None:
    run = start(api)
    put = _put(bearer(run["run_token"]), run["id"], DATA)
    assert put.status_code == 201, put.content
    artifact = Artifact.objects.get(run_id=run["id"])
    assert artifact.storage_key == f"{run['id']}/1/model.bin"  # the store adds its prefix
    stored = moto_server.client().get_object(Bucket=bucket, Key=f"cp/{artifact.storage_key}")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == artifact.sha256 == hashlib.sha256(DATA).hexdigest()
    download = api.get(f"/api/v1/artifacts/{artifact.pk}/download/")
    assert download.status_code == 200 and _body(download) == DATA


def test_a_bucket_that_is_down_is_a_503_and_registers_nothing(
    settings: Any, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer, api: APIClient
) -> None:
    # A port nothing listens on: every call fails to connect, retried, then refused.
    use_bucket(settings, monkeypatch, moto_server, "http://127.0.0.1:9")
    run = start(api)
    put = _put(bearer(run["run_token"]), run["id"], DATA)
    assert put.status_code == 503, put.content
    assert put.json()["code"] == "storage_unavailable"
    assert not Artifact.objects.filter(run_id=run["id"]).exists()
