"""Tracking mode over the REST API: external runs, run-scoped tokens, report batches, uploads.

The SDK end to end (a subprocess with only the client installed, a dropped connection, the
websocket) is tests/e2e/test_tracking.py.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from runs.models import Artifact, LogLine, MetricPoint, Run, RunAttempt
from runs.reconciler import reconcile
from runs.storage import artifact_path
from tests.conftest import make_user


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def start(api: APIClient, name: str = "notebook", **extra: Any) -> dict[str, Any]:
    response = api.post("/api/v1/runs/", {"name": name, "program": None, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()  # type: ignore[no-any-return]


def report(client: APIClient, run_id: int, batch: int, body: bytes) -> Any:
    return client.generic(
        "POST",
        f"/api/v1/runs/{run_id}/report/?batch={batch}",
        body.decode(),
        content_type="application/x-ndjson",
    )


@pytest.mark.django_db
def test_an_operator_starts_an_external_run_running_with_a_token_shown_once(api: APIClient) -> None:
    run = start(api, params={"lr": 0.001})
    assert run["kind"] == "external" and run["status"] == "running" and run["attempt"] == 1
    assert run["params"] == {"lr": 0.001} and run["queue"] == ""
    assert run["run_token"].startswith("cp_")
    token = ApiToken.objects.get(run_id=run["id"])
    assert token.scopes == ["report"] and token.revoked_at is None
    assert RunAttempt.objects.filter(run_id=run["id"], number=1, worker="external").count() == 1
    again = api.get(f"/api/v1/runs/{run['id']}/").json()
    assert "run_token" not in again
    launch = AuditRecord.objects.filter(action="run.launch", target_id=str(run["id"])).get()
    assert launch.details["kind"] == "external"
    assert AuditRecord.objects.filter(action="token.issue", details__run_id=run["id"]).count() == 1
    reconcile()  # nothing to send, nothing to expire: no worker ever sees an external run
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.enqueued_at, row.dispatch_count) == ("running", None, 0)


@pytest.mark.django_db
def test_external_true_also_starts_one_and_a_viewer_may_not(api: APIClient) -> None:
    assert start(api, external=True)["kind"] == "external"
    viewer = make_user("vera", "viewer")
    refused = bearer(do_issue_token(viewer).plaintext).post(
        "/api/v1/runs/", {"name": "x", "program": None}, format="json"
    )
    assert refused.status_code == 403
    bad = api.post("/api/v1/runs/", {"name": "", "program": None, "secrets": ["A"]}, format="json")
    assert bad.status_code == 400 and set(bad.json()) == {"name", "secrets"}


@pytest.mark.django_db
def test_a_run_token_reports_into_its_run_and_nothing_else(api: APIClient) -> None:
    mine, other = start(api), start(api, "other")
    scoped = bearer(mine["run_token"])
    assert report(scoped, mine["id"], 1, b"").status_code == 200
    assert report(scoped, other["id"], 1, b"").status_code == 403
    assert report(scoped, 999_999, 1, b"").status_code == 403
    assert scoped.get("/api/v1/runs/").status_code == 403
    assert scoped.get(f"/api/v1/runs/{mine['id']}/").status_code == 403
    assert scoped.post("/api/v1/runs/", {"name": "x", "program": None}, format="json").status_code == 403
    assert scoped.post("/api/v1/auth/tokens/", {}, format="json").status_code in (403, 404)
    denied = AuditRecord.objects.filter(action="access.denied", details__action="run.report")
    assert denied.count() >= 2


@pytest.mark.django_db
def test_another_operator_may_not_report_into_my_run(api: APIClient) -> None:
    run = start(api)
    stranger = bearer(do_issue_token(make_user("tomas")).plaintext)
    refused = report(stranger, run["id"], 1, lines({"type": "log", "line": "not mine"}))
    assert bearer(run["run_token"]).get(f"/api/v1/runs/{run['id']}/logs/").status_code == 403
    assert refused.status_code == 403  # every run is visible; reporting is its owner's
    assert not LogLine.objects.filter(run_id=run["id"]).exists()


@pytest.mark.django_db
def test_a_batch_writes_lines_points_and_progress_and_is_applied_once(api: APIClient) -> None:
    run = start(api)
    scoped = bearer(run["run_token"])
    body = lines(
        {"type": "log", "line": "hello"},
        {"type": "log", "line": "oops", "stream": "stderr"},
        {"type": "metric", "steps": [1, 2, 3], "values": {"loss": [0.5, 0.4, 0.3], "lr": [1.0, 1.0, 1.0]}},
        {"type": "metric", "step": 4, "values": {"loss": 0.2}},
        {"type": "progress", "step": 4, "total": 10},
        {"type": "nonsense"},
    )
    body += b'{"type": "log", "line": "half a pair \\ud800"}\n'  # a lone surrogate: skipped, not a 500
    first = report(scoped, run["id"], 1, body)
    assert first.status_code == 200, first.content
    assert first.json() | {} == {
        "batch": 1,
        "duplicate": False,
        "lines": 4,
        "points": 7,
        "first_seq": 1,
        "last_seq": 4,
        "skipped": 2,
        "status": "running",
    }
    again = report(scoped, run["id"], 1, body)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    gap = report(scoped, run["id"], 5, b"")
    assert gap.status_code == 409 and gap.json()["expected_batch"] == 2
    assert list(
        LogLine.objects.filter(run_id=run["id"]).order_by("seq").values_list("seq", "stream", "line")
    )[:2] == [
        (1, "stdout", "hello"),
        (2, "stderr", "oops"),
    ]
    assert LogLine.objects.filter(run_id=run["id"]).count() == 4
    assert MetricPoint.objects.filter(series__run_id=run["id"]).count() == 7
    loss = api.get(f"/api/v1/runs/{run['id']}/metrics/?key=loss").json()
    assert [(p["step"], p["value"]) for p in loss["points"]] == [(1, 0.5), (2, 0.4), (3, 0.3), (4, 0.2)]
    assert Run.objects.get(pk=run["id"]).progress_step == 4


@pytest.mark.django_db
def test_a_status_event_ends_the_run_and_revokes_its_token(api: APIClient) -> None:
    run = start(api)
    scoped = bearer(run["run_token"])
    done = report(
        scoped,
        run["id"],
        1,
        lines({"type": "log", "line": "bye"}, {"type": "status", "status": "failed", "message": "diverged"}),
    )
    assert done.status_code == 200 and done.json()["status"] == "failed"
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.error_kind, row.error_code, row.error_message) == (
        "failed",
        "program",
        "reported_failure",
        "diverged",
    )
    assert ApiToken.objects.get(run_id=run["id"]).revoked_at is not None
    assert report(scoped, run["id"], 2, b"").status_code == 401
    assert api.post(f"/api/v1/runs/{run['id']}/retry/").status_code == 409


@pytest.mark.django_db
def test_a_silent_external_run_fails_with_report_timeout(api: APIClient) -> None:
    run = start(api)
    Run.objects.filter(pk=run["id"]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    summary = reconcile()
    assert run["id"] in summary.leases_expired and run["id"] not in summary.requeued
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.error_kind, row.error_code) == ("failed", "timeout", "report_timeout")
    assert ApiToken.objects.get(run_id=run["id"]).revoked_at is not None


@pytest.mark.django_db
def test_a_cancel_ends_an_external_run_at_once(api: APIClient) -> None:
    run = start(api)
    cancelled = api.post(f"/api/v1/runs/{run['id']}/cancel/")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert report(bearer(run["run_token"]), run["id"], 1, b"").status_code == 401


@pytest.mark.django_db
@override_settings(
    CONTROLPLANE={**__import__("django.conf").conf.settings.CONTROLPLANE, "REPORT_MAX_BYTES": 65536}
)
def test_a_report_over_the_body_limit_is_refused_with_413(api: APIClient) -> None:
    run = start(api)
    big = lines(*[{"type": "log", "line": "x" * 1000} for _ in range(100)])
    refused = report(bearer(run["run_token"]), run["id"], 1, big)
    assert refused.status_code == 413 and "65536" in refused.json()["detail"]
    assert LogLine.objects.filter(run_id=run["id"]).count() == 0


@pytest.mark.django_db
def test_an_artifact_upload_round_trips_with_its_sha256(api: APIClient) -> None:
    run = start(api)
    scoped = bearer(run["run_token"])
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    url = f"/api/v1/runs/{run['id']}/artifacts/model.bin"
    wrong = scoped.generic(
        "PUT", url, data.decode(), content_type="application/octet-stream", HTTP_X_CONTENT_SHA256="0" * 64
    )
    assert wrong.status_code == 400 and "X-Content-SHA256" in wrong.json()
    assert not Artifact.objects.filter(run_id=run["id"]).exists()
    put = scoped.generic(
        "PUT",
        url + "?kind=model",
        data.decode(),
        content_type="application/octet-stream",
        HTTP_X_CONTENT_SHA256=digest,
    )
    assert put.status_code == 201, put.content
    assert (
        put.json()["sha256"] == digest and put.json()["size"] == len(data) and put.json()["kind"] == "model"
    )
    listed = api.get(f"/api/v1/runs/{run['id']}/artifacts/").json()
    assert [a["name"] for a in listed] == ["model.bin"]
    stored = artifact_path(Artifact.objects.get(run_id=run["id"]).storage_key)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest  # the download: tests/e2e
    assert AuditRecord.objects.filter(action="artifact.upload", target_id=str(run["id"])).count() == 1
    bad_name = scoped.generic(
        "PUT", f"/api/v1/runs/{run['id']}/artifacts/..hidden", data.decode(), HTTP_X_CONTENT_SHA256=digest
    )
    assert bad_name.status_code == 400 and "name" in bad_name.json()


@pytest.mark.django_db
def test_the_run_page_shows_an_external_run(api: APIClient, owner: Any) -> None:
    from django.test import Client
    from django.urls import reverse

    run = start(api, "page-of-an-external-run")
    report(bearer(run["run_token"]), run["id"], 1, lines({"type": "log", "line": "from afar"}))
    browser = Client()
    browser.force_login(owner)
    page = browser.get(reverse("run-detail", args=[run["id"]]))
    assert page.status_code == 200
    assert b"page-of-an-external-run" in page.content
