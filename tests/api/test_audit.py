"""The audit log: every run action leaves a hash-chained record that the database refuses to
rewrite, and tampering behind the application's back is found by verification."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit.chain import verify_chain
from audit.models import AuditRecord
from runs.attempts import Outcome, claim_run, finish_attempt
from runs.models import ErrorKind, Run, RunStatus
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_api() -> APIClient:
    admin = User.objects.create_superuser("ada", "ada@example.com", "correct-horse-battery-staple-42")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(admin).plaintext}")
    return client


def test_launch_cancel_and_retry_are_recorded_with_actor_ip_and_request_id(
    owner: User, api: APIClient
) -> None:
    run = api.post(
        "/api/v1/runs/",
        {"name": "a", "program": "scripted"},
        format="json",
        HTTP_X_REQUEST_ID="audit-me-1",
        HTTP_USER_AGENT="pytest-agent",
    ).json()
    api.post(f"/api/v1/runs/{run['id']}/cancel/")
    api.post(f"/api/v1/runs/{run['id']}/retry/")
    records = list(AuditRecord.objects.filter(target_type="run").order_by("id"))
    assert [r.action for r in records] == ["run.launch", "run.cancel", "run.retry"]
    launch = records[0]
    assert (launch.actor, launch.actor_role, launch.target_id) == ("olivia", "operator", str(run["id"]))
    assert (launch.ip, launch.user_agent, launch.request_id) == ("127.0.0.1", "pytest-agent", "audit-me-1")
    assert launch.details["program"] == "scripted"
    assert records[1].details == {"status_before": "queued"}
    assert verify_chain().ok


def test_dead_letter_requeue_and_discard_are_audited(owner: User, admin_api: APIClient) -> None:
    run = Run.objects.create(name="d", owner=owner, program="scripted", queue="test-audit", max_attempts=1)
    assert claim_run(run.pk, "w") is not None
    finish_attempt(run.pk, 1, Outcome(RunStatus.FAILED, None, ErrorKind.INFRASTRUCTURE, "x", "y"))
    admin_api.post(f"/api/v1/dead-letters/{run.pk}/requeue/")
    record = AuditRecord.objects.get(action="dead_letter.requeue")
    assert (record.actor, record.actor_role, record.target_id) == ("ada", "admin", str(run.pk))
    assert record.details == {"attempts_spent": 1}


def test_the_database_refuses_to_update_or_delete_audit_records(owner: User, api: APIClient) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the trigger is Postgres-only")
    entry = AuditRecord.objects.first()
    assert entry is not None  # the token issue of the `api` fixture
    for statement in ("UPDATE audit_auditrecord SET actor = 'mallory'", "DELETE FROM audit_auditrecord"):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    assert AuditRecord.objects.get(pk=entry.pk).actor == entry.actor


def _behind_the_apps_back(sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditrecord DISABLE TRIGGER audit_record_no_update_delete")
        cursor.execute(sql)
        cursor.execute("ALTER TABLE audit_auditrecord ENABLE TRIGGER audit_record_no_update_delete")


@pytest.mark.parametrize(
    ("tamper", "broken_at", "reason"),
    [
        ("UPDATE audit_auditrecord SET actor = 'mallory' WHERE id = 2", 2, "edited"),
        ("DELETE FROM audit_auditrecord WHERE id = 2", 3, "missing"),
        ("UPDATE audit_auditrecord SET details = '{\"x\": 1}' WHERE id = 3", 3, "edited"),
    ],
)
def test_tampering_is_found_at_the_first_record_touched(
    owner: User, api: APIClient, tamper: str, broken_at: int, reason: str
) -> None:
    for name in ("a", "b", "c"):
        api.post("/api/v1/runs/", {"name": name, "program": "scripted"}, format="json")
    assert verify_chain().ok
    _behind_the_apps_back(tamper)
    result = verify_chain()
    assert not result.ok
    assert result.first_broken_id == broken_at
    assert reason in result.reason


def test_audit_endpoints_are_for_admins(owner: User, api: APIClient, admin_api: APIClient) -> None:
    assert api.get("/api/v1/audit/").status_code == 403
    assert api.get("/api/v1/audit/verify/").status_code == 403
    assert APIClient().get("/api/v1/audit/verify/").status_code == 401
    body = admin_api.get("/api/v1/audit/verify/").json()
    assert body["ok"] is True
    assert body["checked"] == AuditRecord.objects.count()
    listed = admin_api.get("/api/v1/audit/?action=token.issue").json()["results"]
    assert {r["actor"] for r in listed} == {"olivia", "ada"}


@pytest.mark.django_db(transaction=True)
def test_verify_audit_command_exits_1_naming_the_first_broken_record(owner: User, api: APIClient) -> None:
    from tests.conftest import stack_env

    env = stack_env(ROOT / "var")
    ok = subprocess.run(
        [sys.executable, "manage.py", "verify_audit"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "audit chain ok" in ok.stdout
    _behind_the_apps_back("UPDATE audit_auditrecord SET outcome = 'failure' WHERE id = 1")
    broken = subprocess.run(
        [sys.executable, "manage.py", "verify_audit"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert broken.returncode == 1
    assert (
        broken.stderr.strip() == "audit chain broken at record 1: its contents do not match its hash (edited)"
    )
