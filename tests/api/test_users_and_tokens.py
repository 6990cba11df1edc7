"""Roles, users and API tokens through the REST API: what each may do, and escalation refused."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken, Role, UserRole
from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from tests.conftest import PASSWORD, make_user

STRONG = "plum-orbit-candle-47-river"


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def admin(db: Any) -> User:
    return make_user("ada", "admin")


@pytest.fixture
def admin_api(admin: User) -> APIClient:
    return bearer(do_issue_token(admin).plaintext)


def launch(client: APIClient) -> Any:
    return client.post("/api/v1/runs/", {"name": "r", "program": "scripted"}, format="json")


# -- users ----------------------------------------------------------------------------------------


def test_createsuperuser_makes_an_admin_and_create_user_a_viewer(db: Any) -> None:
    root = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    plain = User.objects.create_user("plain", "plain@example.com", PASSWORD)
    assert UserRole.objects.get(user=root).role == Role.ADMIN
    assert UserRole.objects.get(user=plain).role == Role.VIEWER


def test_an_admin_creates_users_with_roles_and_they_can_do_what_the_role_allows(admin_api: APIClient) -> None:
    created = admin_api.post(
        "/api/v1/users/", {"username": "vera", "password": STRONG, "role": "viewer"}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["role"] == "viewer"
    assert "password" not in created.json()
    token = APIClient().post("/api/v1/auth/token/", {"username": "vera", "password": STRONG}, format="json")
    assert token.status_code == 200
    assert token.json()["scopes"] == ["read"]
    vera = bearer(token.json()["token"])
    assert vera.get("/api/v1/runs/").status_code == 200
    refused = launch(vera)
    assert refused.status_code == 403
    assert "viewer" in refused.json()["detail"]
    record = AuditRecord.objects.filter(action="access.denied").latest("id")
    assert (record.actor, record.actor_role, record.outcome) == ("vera", "viewer", "denied")
    assert record.details["action"] == "run.launch"

    promoted = admin_api.patch(f"/api/v1/users/{created.json()['id']}/", {"role": "operator"}, format="json")
    assert promoted.json()["role"] == "operator"
    # The old token keeps its scopes (read only): promotion does not widen existing tokens.
    assert launch(vera).status_code == 403
    fresh = APIClient().post("/api/v1/auth/token/", {"username": "vera", "password": STRONG}, format="json")
    assert launch(bearer(fresh.json()["token"])).status_code == 201
    assert AuditRecord.objects.filter(action="user.role_change", target_id=str(created.json()["id"])).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "x", "password": "short", "role": "viewer"}, "password"),
        ({"username": "x", "password": "password123", "role": "viewer"}, "password"),
        ({"username": "x", "password": STRONG, "role": "root"}, "role"),
        ({"username": "bad name!", "password": STRONG, "role": "viewer"}, "username"),
        ({"username": "ada", "password": STRONG, "role": "viewer"}, "username"),
        ({"username": "x", "password": STRONG, "role": "viewer", "is_staff": True}, "is_staff"),
        ({"username": "x", "password": "p" * 300, "role": "viewer"}, "password"),
    ],
)
def test_bad_user_input_is_a_400_naming_the_field(
    admin_api: APIClient, body: dict[str, Any], field: str
) -> None:
    response = admin_api.post("/api/v1/users/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_an_operator_cannot_change_its_own_role_or_create_users(owner: User, api: APIClient) -> None:
    escalate = api.patch(f"/api/v1/users/{owner.pk}/", {"role": "admin"}, format="json")
    assert escalate.status_code == 403
    assert UserRole.objects.get(user=owner).role == Role.OPERATOR
    assert (
        api.post("/api/v1/users/", {"username": "m", "password": STRONG, "role": "admin"}).status_code == 403
    )
    denied = AuditRecord.objects.filter(action="access.denied", actor="olivia")
    assert {r.details["action"] for r in denied} == {"user.manage"}


def test_the_last_admin_cannot_be_demoted_or_deactivated(admin: User, admin_api: APIClient) -> None:
    demote = admin_api.patch(f"/api/v1/users/{admin.pk}/", {"role": "viewer"}, format="json")
    assert demote.status_code == 400
    assert "last active admin" in demote.json()["role"][0]
    deactivate = admin_api.patch(f"/api/v1/users/{admin.pk}/", {"is_active": False}, format="json")
    assert deactivate.status_code == 400


def test_deactivating_a_user_ends_its_tokens_and_sessions(
    admin_api: APIClient, owner: User, api: APIClient
) -> None:
    session = APIClient()
    session.force_login(owner)
    assert api.get("/api/v1/runs/").status_code == 200
    assert session.get("/api/v1/runs/").status_code == 200
    assert (
        admin_api.patch(f"/api/v1/users/{owner.pk}/", {"is_active": False}, format="json").status_code == 200
    )
    assert api.get("/api/v1/runs/").status_code == 401
    assert session.get("/api/v1/runs/").status_code in (401, 403)
    assert not ApiToken.objects.filter(user=owner, revoked_at__isnull=True).exists()
    assert AuditRecord.objects.filter(action="user.deactivate", target_id=str(owner.pk)).exists()


def test_an_admin_resets_a_password_and_the_old_one_stops_working(admin_api: APIClient, owner: User) -> None:
    weak = admin_api.post(f"/api/v1/users/{owner.pk}/password/", {"password": "12345678"}, format="json")
    assert weak.status_code == 400
    assert (
        admin_api.post(f"/api/v1/users/{owner.pk}/password/", {"password": STRONG}, format="json").status_code
        == 200
    )
    old = APIClient().post("/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json")
    new = APIClient().post("/api/v1/auth/token/", {"username": "olivia", "password": STRONG}, format="json")
    assert (old.status_code, new.status_code) == (401, 200)
    assert AuditRecord.objects.filter(action="user.password_reset").count() == 1


# -- tokens ---------------------------------------------------------------------------------------


def test_a_token_is_shown_once_stored_hashed_and_listed_by_prefix(owner: User, api: APIClient) -> None:
    created = api.post(
        "/api/v1/tokens/", {"name": "ci", "scopes": ["read"], "expires_in_days": 7}, format="json"
    )
    assert created.status_code == 201, created.content
    body = created.json()
    plaintext = body["token"]
    assert plaintext.startswith(f"cp_{body['prefix']}_")
    stored = ApiToken.objects.get(pk=body["id"])
    assert plaintext not in {stored.digest, stored.prefix, stored.name}
    assert stored.scopes == ["read"]
    assert stored.expires_at is not None
    assert timedelta(days=6, hours=23) < stored.expires_at - timezone.now() <= timedelta(days=7)
    listed = api.get("/api/v1/tokens/").json()["results"]
    assert {t["prefix"] for t in listed} >= {body["prefix"]}
    assert all("token" not in t and "digest" not in t for t in listed)
    # Scoped: a read token reads but cannot launch.
    reader = bearer(plaintext)
    assert reader.get("/api/v1/runs/").status_code == 200
    refused = launch(reader)
    assert refused.status_code == 403
    assert "'launch' scope" in refused.json()["detail"]


def test_a_token_cannot_ask_for_more_than_its_user_or_its_caller_has(owner: User, api: APIClient) -> None:
    beyond_role = api.post("/api/v1/tokens/", {"scopes": ["read", "admin"]}, format="json")
    assert beyond_role.status_code == 400
    assert "admin" in beyond_role.json()["scopes"][0]
    reader = bearer(api.post("/api/v1/tokens/", {"scopes": ["read"]}, format="json").json()["token"])
    beyond_token = reader.post("/api/v1/tokens/", {"scopes": ["read", "launch"]}, format="json")
    assert beyond_token.status_code == 400
    password = APIClient().post(
        "/api/v1/auth/token/",
        {"username": "olivia", "password": PASSWORD, "scopes": ["admin"]},
        format="json",
    )
    assert password.status_code == 400
    refusals = AuditRecord.objects.filter(action="token.issue", outcome="denied")
    assert refusals.count() == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["root"]}, "scopes"),
        ({"scopes": "read"}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": 100_000}, "expires_in_days"),
        ({"expires_in_days": "7"}, "expires_in_days"),
        ({"name": "n" * 101}, "name"),
        ({"owner": "ada"}, "owner"),
    ],
)
def test_bad_token_requests_are_400s_naming_the_field(
    api: APIClient, body: dict[str, Any], field: str
) -> None:
    response = api.post("/api/v1/tokens/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_revocation_is_immediate_and_audited(owner: User, api: APIClient) -> None:
    created = api.post("/api/v1/tokens/", {"name": "temp"}, format="json").json()
    temp = bearer(created["token"])
    assert temp.get("/api/v1/runs/").status_code == 200
    revoked = api.delete(f"/api/v1/tokens/{created['id']}/")
    assert revoked.status_code == 200
    assert revoked.json()["active"] is False
    assert temp.get("/api/v1/runs/").status_code == 401
    assert AuditRecord.objects.filter(action="token.revoke", target_id=str(created["id"])).count() == 1


def test_people_see_and_revoke_only_their_own_tokens_and_admins_everyones(
    owner: User, teammate: User, admin_api: APIClient
) -> None:
    mine = do_issue_token(owner)
    theirs = do_issue_token(teammate)
    olivia = bearer(mine.plaintext)
    assert {t["id"] for t in olivia.get("/api/v1/tokens/").json()["results"]} == {mine.token.pk}
    assert olivia.delete(f"/api/v1/tokens/{theirs.token.pk}/").status_code == 404
    assert ApiToken.objects.get(pk=theirs.token.pk).is_active()
    everyone = {t["id"] for t in admin_api.get("/api/v1/tokens/").json()["results"]}
    assert {mine.token.pk, theirs.token.pk} <= everyone
    assert admin_api.delete(f"/api/v1/tokens/{theirs.token.pk}/").status_code == 200
    assert not ApiToken.objects.get(pk=theirs.token.pk).is_active()


def test_expired_tokens_and_tokens_of_deactivated_users_are_refused(owner: User) -> None:
    expired = do_issue_token(owner, ttl=timedelta(seconds=1))
    ApiToken.objects.filter(pk=expired.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert bearer(expired.plaintext).get("/api/v1/runs/").status_code == 401
    live = do_issue_token(owner)
    User.objects.filter(pk=owner.pk).update(is_active=False)
    assert bearer(live.plaintext).get("/api/v1/runs/").status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + "x" * 5000,
        "Bearer cp_\x00\x01",
        "Bearer",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "Bearer cp_abc_def",
    ],
)
def test_malformed_credentials_get_a_clean_401(db: Any, header: str) -> None:
    client = APIClient()
    response = client.get("/api/v1/runs/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")


def test_whoami_reports_the_role_and_the_scopes_this_request_carries(owner: User) -> None:
    reader = bearer(do_issue_token(owner, scopes=["read"]).plaintext)
    assert reader.get("/api/v1/auth/whoami/").json() == {
        "id": owner.pk,
        "username": "olivia",
        "role": "operator",
        "scopes": ["read"],
        "via_token": True,
    }


def test_a_demoted_users_old_tokens_lose_the_scopes_the_new_role_lacks(
    owner: User, admin: User, admin_api: APIClient
) -> None:
    token = do_issue_token(owner)  # read + launch
    assert admin_api.patch(f"/api/v1/users/{owner.pk}/", {"role": "viewer"}, format="json").status_code == 200
    client = bearer(token.plaintext)
    assert client.get("/api/v1/runs/").status_code == 200
    assert launch(client).status_code == 403
