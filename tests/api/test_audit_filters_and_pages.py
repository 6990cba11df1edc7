"""Reading the audit log: the API's filters and cursor pages, and the admin pages (list with the
same filters, one record, "verify now")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit import chain
from audit.models import AuditRecord
from runs.models import Run
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin() -> User:
    return make_user("ada", "admin")


@pytest.fixture
def admin_api(admin: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(admin).plaintext}")
    return client


@pytest.fixture
def admin_pages(admin: User) -> Client:
    client = Client()
    client.force_login(admin)
    return client


def _backdate(record: AuditRecord, when: datetime) -> None:
    """Records are append-only; tests that need old ones rewrite the time (and the hash) directly."""
    record.created_at = when
    record.hash = chain._digest(record)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditrecord DISABLE TRIGGER audit_record_no_update_delete")
        cursor.execute(
            "UPDATE audit_auditrecord SET created_at = %s, hash = %s WHERE id = %s",
            [when, record.hash, record.pk],
        )
        cursor.execute("ALTER TABLE audit_auditrecord ENABLE TRIGGER audit_record_no_update_delete")


@pytest.fixture
def world(admin: User) -> dict[str, Any]:
    olivia = make_user("olivia", "operator")
    run = Run.objects.create(name="r", owner=olivia, program="scripted", queue="audit-filters")
    launched = chain.record("run.launch", actor=olivia, target=run)
    cancelled = chain.record("run.cancel", actor=admin, target=run)
    denied = chain.record("access.denied", actor=olivia, outcome="denied", details={"action": "audit.read"})
    failed = chain.record("auth.sign_in_failed", actor=None, outcome="failure", details={"username": "x"})
    return {"run": run, "launched": launched, "cancelled": cancelled, "denied": denied, "failed": failed}


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [r["id"] for r in response.json()["results"]]


def test_each_filter_narrows_the_api_list(admin_api: APIClient, world: dict[str, Any]) -> None:
    run_id = str(world["run"].pk)
    launched, cancelled, denied, failed = (world[k].pk for k in ("launched", "cancelled", "denied", "failed"))
    assert ids(admin_api.get("/api/v1/audit/?action=run.launch")) == [launched]
    assert ids(admin_api.get("/api/v1/audit/?action=run.launch,run.cancel")) == [cancelled, launched]
    assert ids(admin_api.get("/api/v1/audit/?actor=olivia")) == [denied, launched]
    assert ids(admin_api.get("/api/v1/audit/?outcome=denied")) == [denied]
    assert ids(admin_api.get("/api/v1/audit/?outcome=failure")) == [failed]
    assert ids(admin_api.get(f"/api/v1/audit/?target_type=run&target_id={run_id}")) == [cancelled, launched]
    assert ids(admin_api.get("/api/v1/audit/?actor=olivia&action=run.cancel")) == []


def test_since_and_until_select_a_window(admin_api: APIClient, world: dict[str, Any]) -> None:
    _backdate(world["launched"], datetime(2026, 1, 10, 12, 0, tzinfo=UTC))
    _backdate(world["cancelled"], datetime(2026, 1, 11, 8, 30, tzinfo=UTC))
    launched, cancelled = world["launched"].pk, world["cancelled"].pk
    assert ids(admin_api.get("/api/v1/audit/?until=2026-01-10")) == [launched]  # a date: the whole day
    assert ids(admin_api.get("/api/v1/audit/?since=2026-01-11&until=2026-01-11")) == [cancelled]
    assert ids(admin_api.get("/api/v1/audit/?since=2026-01-10T12:00:00Z&until=2026-01-11T08:30:00Z")) == [
        launched
    ]
    assert ids(admin_api.get("/api/v1/audit/?since=2026-01-11T09:30:00%2B01:00&until=2026-01-12")) == [
        cancelled
    ]
    recent = ids(
        admin_api.get(f"/api/v1/audit/?since={(datetime.now(UTC) - timedelta(hours=1)).isoformat()[:19]}")
    )
    assert launched not in recent and cancelled not in recent and world["failed"].pk in recent


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("until=2026-02-30", "until"),
        ("since=9999-12-31&until=9999-12-31", "until"),
        ("since=2026-01-02&until=2026-01-01", "until"),
        ("actor=" + "a" * 151, "actor"),
        ("target_id=%00", "target_id"),
        ("action=" + ",".join(["a"] * 21), "action"),
    ],
)
def test_bad_filters_are_400s_naming_the_field(
    admin_api: APIClient, world: dict[str, Any], query: str, field: str
) -> None:
    response = admin_api.get(f"/api/v1/audit/?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_the_api_pages_with_a_cursor(admin_api: APIClient, world: dict[str, Any]) -> None:
    everything = ids(admin_api.get("/api/v1/audit/?page_size=200"))
    assert everything == sorted(everything, reverse=True)
    first = admin_api.get("/api/v1/audit/?page_size=2").json()
    second = admin_api.get(first["next"]).json()
    assert [r["id"] for r in first["results"] + second["results"]] == everything[:4]
    assert "count" not in first


def test_the_list_page_filters_and_links_each_record(admin_pages: Client, world: dict[str, Any]) -> None:
    page = admin_pages.get("/audit/?actor=olivia").content.decode()
    assert f'href="/audit/{world["launched"].pk}/"' in page
    assert f'href="/audit/{world["denied"].pk}/"' in page
    assert f'href="/audit/{world["cancelled"].pk}/"' not in page
    assert 'value="olivia"' in page
    refused = admin_pages.get("/audit/?since=soon&target_id=x")
    assert refused.status_code == 200
    assert "These filters could not be used" in refused.content.decode()
    assert 'href="#f-since"' in refused.content.decode()
    # A NUL never reaches the filters: the input guard answers 400 naming the field (ops.inputs).
    nul = admin_pages.get("/audit/?target_id=%00")
    assert nul.status_code == 400 and "target_id" in nul.content.decode()


def test_the_list_page_pages_by_id(admin_pages: Client, admin: User) -> None:
    made = [chain.record("page.test", actor=admin, details={"i": i}).pk for i in range(120)]
    first = admin_pages.get("/audit/?action=page.test").content.decode()
    assert (
        f"/audit/{made[-1]}/" in first
        and f"/audit/{made[-50]}/" in first
        and f"/audit/{made[-51]}/" not in first
    )
    assert f"?action=page.test&amp;before={made[-50]}" in first
    older = admin_pages.get(f"/audit/?action=page.test&before={made[-50]}").content.decode()
    assert f"/audit/{made[-51]}/" in older and f"/audit/{made[-100]}/" in older
    assert f"?action=page.test&amp;after={made[-51]}" in older
    newer = admin_pages.get(f"/audit/?action=page.test&after={made[-51]}").content.decode()
    assert (
        f"/audit/{made[-1]}/" in newer
        and f"/audit/{made[-50]}/" in newer
        and f"/audit/{made[-51]}/" not in newer
    )
    assert admin_pages.get("/audit/?before=99999999999999999999999").status_code == 200


def test_a_record_page_shows_every_field(admin_pages: Client, world: dict[str, Any]) -> None:
    record = world["denied"]
    page = admin_pages.get(f"/audit/{record.pk}/").content.decode()
    for text in (
        "access.denied",
        "olivia",
        record.hash,
        record.prev_hash,
        "&quot;action&quot;: &quot;audit.read&quot;",
    ):
        assert text in page, text
    assert admin_pages.get("/audit/999999999/").status_code == 404


def test_the_verify_page_says_whether_the_chain_holds(admin_pages: Client, world: dict[str, Any]) -> None:
    ok = admin_pages.get("/audit/verify/").content.decode()
    assert 'data-ok="true"' in ok
    assert f"{AuditRecord.objects.count()} records checked" in ok
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditrecord DISABLE TRIGGER audit_record_no_update_delete")
        cursor.execute(
            "UPDATE audit_auditrecord SET actor = 'mallory' WHERE id = %s", [world["cancelled"].pk]
        )
        cursor.execute("ALTER TABLE audit_auditrecord ENABLE TRIGGER audit_record_no_update_delete")
    broken = admin_pages.get("/audit/verify/").content.decode()
    assert 'data-ok="false"' in broken
    assert f'href="/audit/{world["cancelled"].pk}/"' in broken
    assert "its contents do not match its hash (edited)" in broken


def test_only_admins_see_the_audit_link_and_pages(world: dict[str, Any], admin_pages: Client) -> None:
    assert 'href="/audit/"' in admin_pages.get("/").content.decode()
    operator = Client()
    operator.force_login(User.objects.get(username="olivia"))
    assert 'href="/audit/"' not in operator.get("/").content.decode()
    assert operator.get("/audit/").status_code == 403
    assert (
        AuditRecord.objects.filter(
            action="access.denied", actor="olivia", details__action="audit.read"
        ).count()
        == 2
    )
