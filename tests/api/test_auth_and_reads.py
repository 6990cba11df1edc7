"""Tokens, reading runs, logs and metrics through the API (no worker involved)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from runs.attempts import claim_run
from runs.batches import Batch, write_batch
from runs.models import LogLine, Run
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_token_endpoint_issues_a_working_token_stored_only_as_a_hash(owner: User) -> None:
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert token.startswith("cp_")
    stored = ApiToken.objects.get(user=owner)
    assert token not in stored.digest and stored.digest != token
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/runs/").status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"username": "olivia", "password": "wrong"}, 401),
        ({"username": "nobody", "password": "wrong"}, 401),
        ({"username": "olivia"}, 400),
        ({"username": "o" * 10_000, "password": "x"}, 400),
        ({"username": ["olivia"], "password": PASSWORD}, 400),
    ],
)
def test_token_endpoint_refuses_bad_credentials(owner: User, body: dict[str, object], status: int) -> None:
    response = APIClient().post("/api/v1/auth/token/", body, format="json")
    assert response.status_code == status
    assert ApiToken.objects.count() == 0


def test_expired_and_revoked_tokens_are_refused(owner: User, api: APIClient) -> None:
    token = ApiToken.objects.get(user=owner)
    token.expires_at = timezone.now() - timedelta(seconds=1)
    token.save()
    assert api.get("/api/v1/runs/").status_code == 401
    token.expires_at = None
    token.revoked_at = timezone.now()
    token.save()
    assert api.get("/api/v1/runs/").status_code == 401


def test_a_deactivated_users_token_is_refused(owner: User, api: APIClient) -> None:
    owner.is_active = False
    owner.save()
    assert api.get("/api/v1/runs/").status_code == 401


def make_runs(owner: User, count: int, status: str = "queued") -> list[Run]:
    return Run.objects.bulk_create(
        [
            Run(name=f"r{i}", owner=owner, program="tinygpt", queue="training", status=status)
            for i in range(count)
        ]
    )


def test_run_list_is_cursor_paginated_newest_first(owner: User, api: APIClient) -> None:
    make_runs(owner, 7)
    first = api.get("/api/v1/runs/?page_size=3").json()
    assert [r["name"] for r in first["results"]] == ["r6", "r5", "r4"]
    second = api.get(first["next"]).json()
    assert [r["name"] for r in second["results"]] == ["r3", "r2", "r1"]
    third = api.get(second["next"]).json()
    assert [r["name"] for r in third["results"]] == ["r0"]
    assert third["next"] is None


def test_run_list_filters_by_status(owner: User, api: APIClient) -> None:
    make_runs(owner, 2, "queued")
    make_runs(owner, 3, "succeeded")
    body = api.get("/api/v1/runs/?status=succeeded").json()
    assert [r["status"] for r in body["results"]] == ["succeeded"] * 3
    assert len(api.get("/api/v1/runs/?status=queued,succeeded").json()["results"]) == 5
    bad = api.get("/api/v1/runs/?status=exploded")
    assert bad.status_code == 400
    assert "status" in bad.json()


def test_run_list_costs_the_same_queries_for_any_page_size(
    owner: User, api: APIClient, django_assert_max_num_queries: object
) -> None:
    make_runs(owner, 60)
    with django_assert_max_num_queries(4):  # type: ignore[operator]
        assert len(api.get("/api/v1/runs/?page_size=5").json()["results"]) == 5
    with django_assert_max_num_queries(4):  # type: ignore[operator]
        assert len(api.get("/api/v1/runs/?page_size=50").json()["results"]) == 50


def test_unknown_run_ids_get_404_json(api: APIClient) -> None:
    for path in [
        "/api/v1/runs/999999/",
        "/api/v1/runs/999999/logs/",
        "/api/v1/runs/999999/metrics/?key=a",
        "/api/v1/runs/999999/artifacts/",
    ]:
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["detail"]
    assert api.post("/api/v1/runs/999999/cancel/").status_code == 404
    assert api.get("/api/v1/runs/abc/").status_code == 404
    assert api.get("/api/v1/artifacts/999999/download/").status_code == 404


def _seed_stream(owner: User, lines: int, points: list[tuple[str, int, float]]) -> Run:
    run = make_runs(owner, 1)[0]
    claim = claim_run(run.pk, "test-worker")
    assert claim is not None
    now = timezone.now()
    batch = Batch(
        lines=[(now, "stdout", f"line {i}") for i in range(1, lines + 1)],
        points=[(key, step, value, now) for key, step, value in points],
    )
    write_batch(run.pk, claim.attempt, batch, {})
    return run


def test_logs_page_by_seq_cursor_without_gap_or_overlap(owner: User, api: APIClient) -> None:
    run = _seed_stream(owner, 25, [])
    seen: list[int] = []
    after = 0
    while True:
        body = api.get(f"/api/v1/runs/{run.pk}/logs/?after={after}&limit=10").json()
        seen += [line["seq"] for line in body["results"]]
        if not body["results"]:
            break
        after = body["next_after"]
    assert seen == list(range(1, 26))
    line = api.get(f"/api/v1/runs/{run.pk}/logs/?after=4&limit=1").json()["results"][0]
    assert set(line) == {"seq", "ts", "stream", "line"}
    assert line == {**line, "seq": 5, "stream": "stdout", "line": "line 5"}


@pytest.mark.parametrize("query", ["after=-1", "after=x", "limit=0", "limit=999999"])
def test_bad_log_cursors_are_400(owner: User, api: APIClient, query: str) -> None:
    run = _seed_stream(owner, 1, [])
    assert api.get(f"/api/v1/runs/{run.pk}/logs/?{query}").status_code == 400


def test_metrics_keep_one_value_per_step_the_last_written(owner: User, api: APIClient) -> None:
    run = _seed_stream(owner, 0, [("train/loss", 1, 3.0), ("train/loss", 2, 2.0), ("train/loss", 2, 1.5)])
    claim_attempt = Run.objects.get(pk=run.pk).attempt
    write_batch(run.pk, claim_attempt, Batch(points=[("train/loss", 1, 2.5, timezone.now())]), {})
    body = api.get(f"/api/v1/runs/{run.pk}/metrics/?key=train/loss").json()
    assert body == {
        "key": "train/loss",
        "points": [{"step": 1, "value": 2.5}, {"step": 2, "value": 1.5}],
        "truncated": False,
        "next": None,
        "next_after_step": 2,
    }


def test_downsampled_metrics_keep_a_spike(owner: User, api: APIClient) -> None:
    points = [("train/loss", step, 1.0 + (step % 7) * 0.01) for step in range(1, 5001)]
    points[3217] = ("train/loss", 3218, 99.0)
    run = _seed_stream(owner, 0, points)
    body = api.get(f"/api/v1/runs/{run.pk}/metrics/?key=train/loss&max_points=100").json()
    assert 2 <= len(body["points"]) <= 100
    steps = [p["step"] for p in body["points"]]
    assert steps == sorted(steps)
    assert {"step": 3218, "value": 99.0} in body["points"]
    assert min(p["value"] for p in body["points"]) == 1.0


def test_metrics_need_a_key_and_name_the_available_ones(owner: User, api: APIClient) -> None:
    run = _seed_stream(owner, 0, [("val/loss", 1, 1.0)])
    response = api.get(f"/api/v1/runs/{run.pk}/metrics/")
    assert response.status_code == 400
    assert "val/loss" in response.json()["key"][0]
    assert api.get(f"/api/v1/runs/{run.pk}/metrics/?key=val/loss&max_points=1").status_code == 400


def test_cancel_of_a_queued_run_is_immediate(owner: User, api: APIClient) -> None:
    run = make_runs(owner, 1)[0]
    response = api.post(f"/api/v1/runs/{run.pk}/cancel/")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert Run.objects.get(pk=run.pk).finished_at is not None
    again = api.post(f"/api/v1/runs/{run.pk}/cancel/")
    assert again.status_code == 409


def test_stale_attempts_cannot_write(owner: User) -> None:
    from runs.attempts import StaleAttempt

    run = _seed_stream(owner, 1, [])
    Run.objects.filter(pk=run.pk).update(attempt=5)
    with pytest.raises(StaleAttempt):
        write_batch(run.pk, 1, Batch(lines=[(timezone.now(), "stdout", "late")]), {})
    assert LogLine.objects.filter(run=run).count() == 1


def test_a_second_claim_of_the_same_run_starts_nothing(owner: User) -> None:
    run = make_runs(owner, 1)[0]
    assert claim_run(run.pk, "worker-a") is not None
    assert claim_run(run.pk, "worker-b") is None
    assert Run.objects.get(pk=run.pk).attempt == 1
