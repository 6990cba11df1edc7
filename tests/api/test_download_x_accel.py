"""Downloads behind nginx: with CONTROLPLANE_X_ACCEL_PREFIX the product authorizes and audits, and
a real nginx (bench/nginx.py, the layout of deploy/nginx/controlplane.conf) sends the bytes."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from bench import nginx
from runs.downloads import check_x_accel_prefix
from runs.models import Artifact, Run
from runs.storage import artifact_path
from tests.conftest import free_port

PREFIX = "/_protected_artifacts/"
BODY = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def artifact(owner: User) -> Artifact:
    run = Run.objects.create(name="a", owner=owner, program="scripted", queue="x-accel-downloads")
    key = f"{run.pk}/1/model weights.bin"
    path = artifact_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BODY)
    return Artifact.objects.create(
        run=run,
        attempt=1,
        name="model weights.bin",
        kind="model",
        size=len(BODY),
        sha256=hashlib.sha256(BODY).hexdigest(),
        storage_key=key,
    )


def downloads() -> list[dict[str, Any]]:
    return [r.details for r in AuditRecord.objects.filter(action="artifact.download").order_by("id")]


@pytest.mark.django_db
def test_with_a_prefix_the_view_hands_the_file_to_nginx_after_auditing(
    settings: Any, api: APIClient, artifact: Artifact
) -> None:
    settings.X_ACCEL_PREFIX = PREFIX
    url = f"/api/v1/artifacts/{artifact.pk}/download/"
    whole = api.get(url)
    assert whole.status_code == 200
    assert whole["X-Accel-Redirect"] == f"{PREFIX}{artifact.run_id}/1/model%20weights.bin"
    assert whole["ETag"] == f'"{artifact.sha256}"'
    assert not whole.streaming and whole.content == b""  # nginx sends the bytes
    part = api.get(url, HTTP_RANGE="bytes=10-19")
    assert part.status_code == 206 and "X-Accel-Redirect" in part
    # What sends no bytes is still answered by the product itself, and never handed over.
    refused = api.get(url, HTTP_RANGE=f"bytes={len(BODY)}-")
    assert refused.status_code == 416 and "X-Accel-Redirect" not in refused
    cached = api.get(url, HTTP_IF_NONE_MATCH=f'"{artifact.sha256}"')
    assert cached.status_code == 304 and "X-Accel-Redirect" not in cached
    assert [(d["status"], d.get("range")) for d in downloads()] == [(200, None), (206, "bytes 10-19/1048576")]


@pytest.fixture
def proxy(live_server: Any, settings: Any, tmp_path: Path) -> Iterator[str]:
    if nginx.nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run installs it)")
    settings.X_ACCEL_PREFIX = PREFIX
    port = free_port()
    server = nginx.start(tmp_path / "nginx", port, Path(settings.ARTIFACTS_DIR), upstream=live_server.url)
    yield f"http://127.0.0.1:{port}"
    nginx.stop(server)
    shutil.rmtree(tmp_path / "nginx", ignore_errors=True)


@pytest.mark.django_db(transaction=True)
def test_through_nginx_the_bytes_ranges_and_etag_are_the_products(
    proxy: str, owner: User, artifact: Artifact
) -> None:
    auth = {"Authorization": f"Bearer {do_issue_token(owner).plaintext}"}
    url = f"{proxy}/api/v1/artifacts/{artifact.pk}/download/"
    with httpx.Client(headers=auth, timeout=30) as client:
        whole = client.get(url)
        assert whole.status_code == 200
        assert whole.content == BODY
        assert whole.headers["ETag"] == f'"{artifact.sha256}"'
        assert whole.headers.get_list("Cache-Control") == ["private, no-transform"]  # passed through, once
        assert whole.headers["Content-Disposition"] == "attachment; filename*=UTF-8''model%20weights.bin"
        assert "X-Accel-Redirect" not in whole.headers
        tail = client.get(url, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206
        assert tail.headers["Content-Range"] == f"bytes {len(BODY) - 100}-{len(BODY) - 1}/{len(BODY)}"
        assert tail.content == BODY[-100:]
        # A resumed download (client/controlplane_client/download.py) sends If-Range with the sha256.
        resumed = client.get(url, headers={"Range": "bytes=1000-", "If-Range": f'"{artifact.sha256}"'})
        assert resumed.status_code == 206 and resumed.content == BODY[1000:]
        changed = client.get(url, headers={"Range": "bytes=1000-", "If-Range": '"another-file"'})
        assert changed.status_code == 200 and changed.content == BODY
        assert client.get(url, headers={"Authorization": "Bearer cp_wrong"}).status_code == 401
    # The internal location is reachable only through the product's answer, never by URL.
    direct = httpx.get(f"{proxy}{PREFIX}{artifact.storage_key}", timeout=10)
    assert direct.status_code == 404
    assert [d["status"] for d in downloads()] == [200, 206, 206, 200]


@pytest.mark.parametrize("prefix", ["_protected/", "/protected", "/a b/", "http://x/"])
def test_a_prefix_that_is_not_a_uri_path_between_slashes_stops_the_start(settings: Any, prefix: str) -> None:
    settings.X_ACCEL_PREFIX = prefix
    with pytest.raises(ImproperlyConfigured, match="CONTROLPLANE_X_ACCEL_PREFIX"):
        check_x_accel_prefix()
    settings.X_ACCEL_PREFIX = "/_protected_artifacts/"
    check_x_accel_prefix()
