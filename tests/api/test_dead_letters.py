"""Dead letters through the API and the admin page."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from runs.attempts import Outcome, claim_run, finish_attempt
from runs.models import ErrorKind, Run, RunStatus

pytestmark = pytest.mark.django_db
QUEUE = "test-dead-letters"


@pytest.fixture
def admin_user() -> User:
    return User.objects.create_superuser("ada", "ada@example.com", "correct-horse-battery-staple-42")


@pytest.fixture
def admin_api(admin_user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(admin_user).plaintext}")
    return client


def dead_run(owner: User) -> Run:
    run = Run.objects.create(name="doomed", owner=owner, program="scripted", queue=QUEUE, max_attempts=2)
    for attempt in (1, 2):
        assert claim_run(run.pk, f"worker-{attempt}") is not None
        finish_attempt(
            run.pk,
            attempt,
            Outcome(RunStatus.FAILED, None, ErrorKind.INFRASTRUCTURE, "lost", f"gone {attempt}"),
        )
        Run.objects.filter(pk=run.pk).update(not_before=None)
    run.refresh_from_db()
    assert run.status == RunStatus.DEAD
    return run


def test_admins_list_dead_letters_with_every_attempt_and_reason(owner: User, admin_api: APIClient) -> None:
    run = dead_run(owner)
    body = admin_api.get("/api/v1/dead-letters/").json()
    assert [r["id"] for r in body["results"]] == [run.pk]
    attempts = body["results"][0]["attempts"]
    assert [(a["number"], a["error_kind"], a["error_message"]) for a in attempts] == [
        (1, "infrastructure", "gone 1"),
        (2, "infrastructure", "gone 2"),
    ]


def test_non_admins_may_not_see_or_act_on_dead_letters(owner: User, api: APIClient) -> None:
    run = dead_run(owner)
    assert api.get("/api/v1/dead-letters/").status_code == 403
    assert api.post(f"/api/v1/dead-letters/{run.pk}/requeue/").status_code == 403
    assert APIClient().get("/api/v1/dead-letters/").status_code == 401
    assert Run.objects.get(pk=run.pk).status == RunStatus.DEAD


def test_requeue_gives_a_fresh_budget_and_the_run_can_be_claimed(owner: User, admin_api: APIClient) -> None:
    run = dead_run(owner)
    response = admin_api.post(f"/api/v1/dead-letters/{run.pk}/requeue/")
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    run.refresh_from_db()
    assert run.max_attempts == 4
    claim = claim_run(run.pk, "worker-3")
    assert claim is not None and claim.attempt == 3
    assert admin_api.post(f"/api/v1/dead-letters/{run.pk}/requeue/").status_code == 404


def test_discard_hides_a_dead_letter_and_keeps_the_run(owner: User, admin_api: APIClient) -> None:
    run = dead_run(owner)
    assert admin_api.post(f"/api/v1/dead-letters/{run.pk}/discard/").status_code == 202
    assert admin_api.get("/api/v1/dead-letters/").json()["results"] == []
    run.refresh_from_db()
    assert run.status == RunStatus.DEAD
    assert run.discarded_at is not None


def test_the_dead_letter_page_lists_dead_letters_and_requeues_them(owner: User, admin_user: User) -> None:
    run = dead_run(owner)
    browser = Client()
    browser.force_login(admin_user)
    audited = AuditRecord.objects.count()
    page = browser.get("/dead-letters/")
    assert page.status_code == 200
    assert b"doomed" in page.content
    response = browser.post(f"/dead-letters/{run.pk}/requeue/", follow=True)
    assert response.status_code == 200
    assert f"Run {run.pk} requeued.".encode() in response.content
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert AuditRecord.objects.count() > audited  # the same audited service as the API


def test_the_dead_letter_page_discards_and_refuses_non_admins(owner: User, admin_user: User) -> None:
    run = dead_run(owner)
    admin_browser, owner_browser = Client(), Client()
    admin_browser.force_login(admin_user)
    owner_browser.force_login(owner)
    assert owner_browser.get("/dead-letters/").status_code == 403
    assert owner_browser.post(f"/dead-letters/{run.pk}/discard/").status_code == 403
    assert admin_browser.post(f"/dead-letters/{run.pk}/discard/").status_code == 302
    assert Run.objects.get(pk=run.pk).discarded_at is not None
    assert b"No dead letters." in admin_browser.get("/dead-letters/").content
