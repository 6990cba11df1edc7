"""Sign-ins, failures, sign-outs, refused tokens and artifact downloads leave audit records, with
the attempted username but never a password, and bad credentials get a clean 4xx."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.tokens import do_issue_token, do_revoke_token
from audit.chain import verify_chain
from audit.models import AuditRecord
from runs.models import Artifact, Run
from runs.storage import artifact_path
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

WRONG = "not-the-password-9f8e7d"


def records(action: str) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(action=action).order_by("id"))


def everything_recorded() -> str:
    return json.dumps(list(AuditRecord.objects.values()), default=str)


def test_a_form_sign_in_and_sign_out_are_recorded(owner: User) -> None:
    client = Client(HTTP_USER_AGENT="signin-agent", REMOTE_ADDR="10.1.0.1")
    response = client.post("/login/", {"username": "olivia", "password": PASSWORD})
    assert response.status_code == 302
    signed_in = records("auth.sign_in")[-1]
    assert (signed_in.actor, signed_in.actor_role, signed_in.outcome) == ("olivia", "operator", "success")
    assert (signed_in.ip, signed_in.user_agent) == ("10.1.0.1", "signin-agent")
    assert signed_in.details == {"method": "password"}
    assert client.post("/logout/").status_code == 302
    signed_out = records("auth.sign_out")[-1]
    assert (signed_out.actor, signed_out.target_type, signed_out.target_id) == (
        "olivia",
        "user",
        str(owner.pk),
    )
    assert verify_chain().ok


@pytest.mark.parametrize("username", ["olivia", "nobody-at-all"])
def test_a_failed_form_sign_in_records_the_username_never_the_password(owner: User, username: str) -> None:
    client = Client(REMOTE_ADDR="10.1.0.2")
    response = client.post("/login/", {"username": username, "password": WRONG})
    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content
    failed = records("auth.sign_in_failed")[-1]
    assert (failed.actor, failed.actor_role, failed.outcome) == ("", "anonymous", "failure")
    assert failed.details == {"username": username, "method": "password", "reason": "invalid"}
    assert WRONG not in everything_recorded()


def test_a_token_request_records_the_sign_in_and_the_token(owner: User) -> None:
    response = APIClient(REMOTE_ADDR="10.1.0.3").post(
        "/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200
    signed_in = records("auth.sign_in")[-1]
    assert signed_in.details == {"method": "token", "token_prefix": response.json()["prefix"]}
    assert signed_in.ip == "10.1.0.3"
    assert records("token.issue")[-1].details["prefix"] == response.json()["prefix"]
    assert PASSWORD not in everything_recorded()


@pytest.mark.parametrize("username", ["olivia", "nobody-at-all"])
def test_a_failed_token_request_is_the_same_401_for_unknown_users_and_is_recorded(
    owner: User, username: str
) -> None:
    response = APIClient(REMOTE_ADDR="10.1.0.4").post(
        "/api/v1/auth/token/", {"username": username, "password": WRONG}, format="json"
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid username or password.", "code": "invalid_credentials"}
    failed = records("auth.sign_in_failed")[-1]
    assert failed.details == {"username": username, "method": "token", "reason": "invalid"}
    assert WRONG not in everything_recorded()


@pytest.mark.parametrize(
    ("body", "field", "recorded_username"),
    [
        ({"username": "u" * 300, "password": WRONG}, "username", "u" * 150),
        ({"username": "olivia", "password": "p" * 10_000}, "password", "olivia"),
        ({"username": "olivia"}, "password", "olivia"),
        ({"username": ["olivia"], "password": WRONG}, "username", ""),
        ({"username": "", "password": ""}, "username", ""),
    ],
)
def test_oversized_or_malformed_credentials_get_a_400_and_an_audit_record(
    owner: User, body: dict[str, Any], field: str, recorded_username: str
) -> None:
    response = APIClient().post("/api/v1/auth/token/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    failed = records("auth.sign_in_failed")[-1]
    assert failed.details == {"username": recorded_username, "method": "token", "reason": "malformed"}
    assert "p" * 100 not in everything_recorded()


def fresh_address() -> str:
    """A client address no earlier run used: refusals are de-duplicated per address for a minute."""
    return f"fd00::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


def _bearer(token: str, address: str) -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_refused_tokens_get_a_401_and_an_audit_record_naming_why(owner: User) -> None:
    admin = make_user("ada", "admin")
    expired = do_issue_token(owner)
    ApiToken.objects.filter(pk=expired.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = do_issue_token(owner)
    do_revoke_token(admin, revoked.token)
    leaver = make_user("lena", "viewer")
    leavers_token = do_issue_token(leaver)
    User.objects.filter(pk=leaver.pk).update(is_active=False)
    cases = {
        "expired": (expired.plaintext, expired.token.prefix),
        "revoked": (revoked.plaintext, revoked.token.prefix),
        "user_deactivated": (leavers_token.plaintext, leavers_token.token.prefix),
        "unknown": ("cp_00000000_" + "x" * 43, ""),
        "malformed": ("x" * 5000, ""),
    }
    for reason, (token, prefix) in cases.items():
        address = fresh_address()
        response = _bearer(token, address).get("/api/v1/runs/")
        assert response.status_code == 401, reason
        record = records("auth.token_refused")[-1]
        assert (record.outcome, record.ip, record.details) == (
            "denied",
            address,
            {"reason": reason, "prefix": prefix},
        )
    assert "x" * 100 not in everything_recorded()


def test_a_refused_token_is_recorded_once_a_minute_per_address_not_once_per_request(owner: User) -> None:
    issued = do_issue_token(owner)
    do_revoke_token(owner, issued.token)
    client = _bearer(issued.plaintext, fresh_address())
    for _ in range(5):
        assert client.get("/api/v1/runs/").status_code == 401
    assert len(records("auth.token_refused")) == 1
    assert _bearer(issued.plaintext, fresh_address()).get("/api/v1/runs/").status_code == 401
    assert len(records("auth.token_refused")) == 2


@pytest.fixture
def artifact(owner: User) -> Artifact:
    run = Run.objects.create(name="a", owner=owner, program="scripted", queue="audit-downloads")
    key = f"{run.pk}/1/model.bin"
    path = artifact_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 4)
    return Artifact.objects.create(
        run=run, attempt=1, name="model.bin", kind="model", size=1024, sha256="a" * 64, storage_key=key
    )


def test_a_download_that_sends_bytes_is_recorded_once_and_one_that_sends_none_is_not(
    owner: User, api: APIClient, artifact: Artifact
) -> None:
    url = f"/api/v1/artifacts/{artifact.pk}/download/"
    assert api.get(url).status_code == 200
    assert api.get(url, HTTP_RANGE="bytes=0-99").status_code == 206
    assert api.head(url).status_code == 200
    assert api.get(url, HTTP_IF_NONE_MATCH=f'"{artifact.sha256}"').status_code == 304
    assert api.get(url, HTTP_RANGE="bytes=5000-").status_code == 416
    downloads = records("artifact.download")
    assert len(downloads) == 2
    whole, part = downloads
    assert (whole.actor, whole.target_type, whole.target_id) == ("olivia", "artifact", str(artifact.pk))
    assert whole.details == {
        "run_id": artifact.run_id,
        "name": "model.bin",
        "sha256": "a" * 64,
        "status": 200,
    }
    assert part.details["status"] == 206
    assert part.details["range"] == "bytes 0-99/1024"


def test_a_refused_download_is_not_a_download(owner: User, artifact: Artifact) -> None:
    assert APIClient().get(f"/api/v1/artifacts/{artifact.pk}/download/").status_code == 401
    assert records("artifact.download") == []
