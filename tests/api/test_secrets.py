"""Secrets: write-only, encrypted at rest, admin-managed, allowed per user or role, checked at
launch and again when a worker claims the run, every change and use audited without the value."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from runs.attempts import claim_run
from runs.models import ErrorKind, Run
from tests.conftest import ROOT, make_user
from vault import crypto
from vault.models import Secret
from workers.preparation import resolve_run_secrets

pytestmark = pytest.mark.django_db

VALUE = "hunter2-but-longer-0123456789"
OTHER = "a-completely-different-value-42"


def bearer(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(user).plaintext}")
    return client


@pytest.fixture
def admin(db: Any) -> User:
    return make_user("ada", "admin")


@pytest.fixture
def admin_api(admin: User) -> APIClient:
    return bearer(admin)


def create(client: APIClient, **body: Any) -> Any:
    return client.post("/api/v1/secrets/", {"name": "HF_TOKEN", "value": VALUE, **body}, format="json")


def everything_stored() -> str:
    """Every secret row and audit record as text, as a backup of the database would hold them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, ciphertext, key_id FROM vault_secret")
        secrets = cursor.fetchall()
        cursor.execute("SELECT action, details::text FROM audit_auditrecord")
        records = cursor.fetchall()
    return json.dumps([secrets, records])


# -- the API ----------------------------------------------------------------------------------


def test_an_admin_creates_a_secret_and_gets_its_metadata_but_never_its_value(
    admin_api: APIClient, owner: User
) -> None:
    response = create(admin_api, allowed_users=["olivia"], allowed_roles=["operator"])
    assert response.status_code == 201, response.content
    body = response.json()
    assert VALUE not in response.content.decode()
    assert set(body) == {
        "id",
        "name",
        "allowed_users",
        "allowed_roles",
        "key_id",
        "created_at",
        "created_by",
        "updated_at",
        "updated_by",
        "last_used_at",
    }
    assert (body["name"], body["allowed_users"], body["allowed_roles"]) == (
        "HF_TOKEN",
        ["olivia"],
        ["operator"],
    )
    assert (body["created_by"], body["last_used_at"]) == ("ada", None)


def test_the_value_is_stored_only_as_ciphertext_that_the_configured_key_opens(admin_api: APIClient) -> None:
    create(admin_api)
    secret = Secret.objects.get(name="HF_TOKEN")
    assert VALUE not in everything_stored()
    assert secret.key_id == crypto.keyring().newest_id
    assert crypto.keyring().decrypt(secret.ciphertext) == VALUE


def test_list_and_detail_by_name_or_id_never_carry_the_value(admin_api: APIClient) -> None:
    created = create(admin_api).json()
    create(admin_api, name="WANDB_API_KEY", value=OTHER)
    listing = admin_api.get("/api/v1/secrets/")
    assert [s["name"] for s in listing.json()] == ["HF_TOKEN", "WANDB_API_KEY"]
    by_name = admin_api.get("/api/v1/secrets/HF_TOKEN/")
    by_id = admin_api.get(f"/api/v1/secrets/{created['id']}/")
    assert by_name.json() == by_id.json() == created
    for response in (listing, by_name, by_id):
        assert VALUE not in response.content.decode() and OTHER not in response.content.decode()
    assert admin_api.get("/api/v1/secrets/NOPE/").status_code == 404
    assert admin_api.get("/api/v1/secrets/999999/").status_code == 404


def test_changing_the_value_and_who_may_use_it_is_audited_without_the_value(
    admin_api: APIClient, owner: User, teammate: User
) -> None:
    create(admin_api, allowed_users=["olivia"])
    response = admin_api.patch(
        "/api/v1/secrets/HF_TOKEN/", {"value": OTHER, "allowed_users": ["tomas"]}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["allowed_users"] == ["tomas"]
    assert OTHER not in response.content.decode()
    assert crypto.keyring().decrypt(Secret.objects.get(name="HF_TOKEN").ciphertext) == OTHER
    roles_only = admin_api.patch("/api/v1/secrets/HF_TOKEN/", {"allowed_roles": ["operator"]}, format="json")
    assert roles_only.json()["allowed_users"] == ["tomas"]  # untouched fields stay
    records = list(AuditRecord.objects.filter(action__startswith="secret.").order_by("id"))
    assert [r.action for r in records] == ["secret.create", "secret.update", "secret.update"]
    assert records[1].details == {
        "name": "HF_TOKEN",
        "changed": ["value", "allowed_users"],
        "allowed_users": ["tomas"],
        "allowed_roles": [],
    }
    assert records[2].details["changed"] == ["allowed_roles"]
    assert (records[1].actor, records[1].actor_role, records[1].target_type) == ("ada", "admin", "secret")
    stored = everything_stored()
    assert VALUE not in stored and OTHER not in stored


def test_deleting_a_secret_is_audited_and_it_is_gone(admin_api: APIClient) -> None:
    created = create(admin_api).json()
    assert admin_api.delete("/api/v1/secrets/HF_TOKEN/").status_code == 204
    assert not Secret.objects.exists()
    record = AuditRecord.objects.get(action="secret.delete")
    assert (record.target_id, record.details) == (str(created["id"]), {"name": "HF_TOKEN"})
    assert admin_api.delete("/api/v1/secrets/HF_TOKEN/").status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"value": "short7!"}, "value", "at least 8 characters"),
        ({"value": ""}, "value", "at least 8 characters"),
        ({"value": 12345678}, "value", "string"),
        ({"value": "x" * 40_000}, "value", "at most"),
        ({"value": "nul\x00inside-the-value"}, "value", "NUL"),
        ({"name": "hf_token"}, "name", "not a valid environment variable name"),
        ({"name": "1TOKEN"}, "name", "not a valid environment variable name"),
        ({"name": "HF-TOKEN"}, "name", "not a valid environment variable name"),
        ({"name": "HF TOKEN"}, "name", "not a valid environment variable name"),
        ({"name": "A" * 129}, "name", "not a valid environment variable name"),
        ({"name": ""}, "name", "required"),
        ({"name": ["HF_TOKEN"]}, "name", "required"),
        ({"name": "PATH"}, "name", "reserved"),
        ({"name": "CONTROLPLANE_RUN_ID"}, "name", "reserved"),
        ({"name": "LD_PRELOAD"}, "name", "reserved"),
        ({"name": "PYTHONPATH"}, "name", "reserved"),
        ({"allowed_users": ["nobody"]}, "allowed_users", "unknown user 'nobody'"),
        ({"allowed_users": "olivia"}, "allowed_users", "list of usernames"),
        # Refused by the API's JSON parser before the view (ops.parsers), naming the item.
        ({"allowed_users": ["nul\x00name"]}, "allowed_users[0]", "NUL"),
        ({"allowed_roles": ["root"]}, "allowed_roles", "unknown role 'root'"),
        ({"colour": "blue"}, "colour", "unknown field"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_never_echoes_the_value(
    admin_api: APIClient, body: dict[str, Any], field: str, fragment: str
) -> None:
    response = create(admin_api, **body)
    assert response.status_code == 400, response.content
    assert fragment in response.json()[field][0]
    if isinstance(body.get("value"), str) and len(body["value"]) >= 4:
        assert body["value"][:4000] not in response.content.decode()
    assert not Secret.objects.exists()


def test_a_duplicate_name_a_renaming_and_a_non_object_body_are_400s(admin_api: APIClient) -> None:
    create(admin_api)
    assert "already exists" in create(admin_api).json()["name"][0]
    renamed = admin_api.patch("/api/v1/secrets/HF_TOKEN/", {"name": "OTHER"}, format="json")
    assert renamed.status_code == 400 and "cannot be changed" in renamed.json()["name"][0]
    short = admin_api.patch("/api/v1/secrets/HF_TOKEN/", {"value": "tiny"}, format="json")
    assert short.status_code == 400 and "value" in short.json()
    listing = admin_api.post("/api/v1/secrets/", [1, 2], format="json")
    assert listing.status_code == 400 and "non_field_errors" in listing.json()
    assert crypto.keyring().decrypt(Secret.objects.get().ciphertext) == VALUE


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_non_admins_get_403_on_every_secrets_endpoint_and_each_refusal_is_audited(
    admin_api: APIClient, role: str
) -> None:
    create(admin_api)
    client = bearer(make_user(f"someone-{role}", role))
    answers = [
        client.get("/api/v1/secrets/").status_code,
        client.post("/api/v1/secrets/", {"name": "MINE", "value": VALUE}, format="json").status_code,
        client.get("/api/v1/secrets/HF_TOKEN/").status_code,
        client.patch("/api/v1/secrets/HF_TOKEN/", {"value": OTHER}, format="json").status_code,
        client.delete("/api/v1/secrets/HF_TOKEN/").status_code,
    ]
    assert answers == [403] * 5
    denials = AuditRecord.objects.filter(action="access.denied", actor=f"someone-{role}")
    assert denials.count() == 5
    assert {r.details["action"] for r in denials} == {"secret.manage"}
    assert Secret.objects.get().allowed_users.count() == 0
    assert crypto.keyring().decrypt(Secret.objects.get().ciphertext) == VALUE


def test_anonymous_callers_get_401(anonymous_api: APIClient) -> None:
    assert anonymous_api.get("/api/v1/secrets/").status_code == 401
    assert (
        anonymous_api.post("/api/v1/secrets/", {"name": "X_Y", "value": VALUE}, format="json").status_code
        == 401
    )


def test_an_admin_token_without_the_admin_scope_is_refused(admin: User) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(admin, scopes=['read']).plaintext}")
    assert client.get("/api/v1/secrets/").status_code == 403


# -- keys -------------------------------------------------------------------------------------


def test_production_without_a_key_answers_503_naming_the_setting(admin_api: APIClient, settings: Any) -> None:
    settings.CONTROLPLANE_SECRETS_KEY = ""
    assert not settings.DEBUG and not settings.STANDALONE_DEFAULTS
    response = create(admin_api)
    assert response.status_code == 503
    assert response.json()["code"] == "secrets_not_configured"
    assert "CONTROLPLANE_SECRETS_KEY" in response.json()["detail"]
    assert admin_api.get("/api/v1/secrets/").status_code == 200
    assert not Secret.objects.exists()


def test_standalone_without_a_key_generates_one_once_readable_only_by_its_owner(
    settings: Any, tmp_path: Path
) -> None:
    settings.CONTROLPLANE_SECRETS_KEY = ""
    settings.STANDALONE_DEFAULTS = True
    settings.DATA_DIR = tmp_path / "var"
    ring = crypto.keyring()
    key_file = tmp_path / "var" / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    token = ring.encrypt(VALUE)
    assert crypto.keyring().decrypt(token) == VALUE  # the same key the next time
    assert Fernet(key_file.read_text().strip().encode()).decrypt(token.encode()).decode() == VALUE
    assert list((tmp_path / "var").iterdir()) == [key_file]  # no temporary file left behind


def test_a_malformed_key_list_names_the_bad_key_by_position() -> None:
    good = Fernet.generate_key().decode()
    assert crypto.parse_keys(f" {good} ,") == [good.encode()]
    with pytest.raises(ValueError, match="key 2 is not a Fernet key"):
        crypto.parse_keys(f"{good},not-a-key")


def test_a_process_with_a_malformed_key_list_refuses_to_start() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlplane.settings"}
    env["CONTROLPLANE_SECRETS_KEY"] = f"{Fernet.generate_key().decode()},oops"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "CONTROLPLANE_SECRETS_KEY: key 2 is not a Fernet key" in result.stderr.splitlines()[-1]


def test_key_rotation_keeps_every_secret_readable(admin_api: APIClient, settings: Any) -> None:
    key_a, key_b = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.CONTROLPLANE_SECRETS_KEY = key_a
    values = {f"SECRET_{i}": f"value-number-{i}-{'z' * i}" for i in range(5)}
    for name, value in values.items():
        assert create(admin_api, name=name, value=value).status_code == 201

    settings.CONTROLPLANE_SECRETS_KEY = f"{key_b},{key_a}"
    out = io.StringIO()
    call_command("rotate_secrets", stdout=out)
    assert out.getvalue().startswith(f"rotated 5 secrets to key {crypto.key_id(key_b.encode())}; 0 already")

    settings.CONTROLPLANE_SECRETS_KEY = key_b
    ring = crypto.keyring()
    for secret in Secret.objects.all():
        assert ring.decrypt(secret.ciphertext) == values[secret.name]
        assert secret.key_id == ring.newest_id
    again = io.StringIO()
    call_command("rotate_secrets", stdout=again)  # idempotent: nothing left to do
    assert again.getvalue().startswith("rotated 0 secrets") and "5 already used it" in again.getvalue()
    assert AuditRecord.objects.filter(action="secret.rotate").count() == 1


def test_rotation_without_the_old_key_fails_with_one_line_and_changes_nothing(
    admin_api: APIClient, settings: Any
) -> None:
    create(admin_api)
    before = Secret.objects.get().ciphertext
    settings.CONTROLPLANE_SECRETS_KEY = Fernet.generate_key().decode()
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("rotate_secrets", stdout=io.StringIO(), stderr=err)
    assert exit_info.value.code == 1
    assert err.getvalue().count("\n") == 1 and "HF_TOKEN" in err.getvalue()
    assert Secret.objects.get().ciphertext == before


# -- launching with secrets -------------------------------------------------------------------


def launch(client: APIClient, secrets: Any) -> Any:
    return client.post(
        "/api/v1/runs/", {"name": "s", "program": "scripted", "secrets": secrets}, format="json"
    )


def test_a_run_may_name_only_existing_secrets(admin_api: APIClient, api: APIClient) -> None:
    response = launch(api, ["NOPE"])
    assert response.status_code == 400
    assert response.json()["secrets"] == ["unknown secret 'NOPE'"]
    assert not Run.objects.exists()


def test_a_secret_not_allowed_to_the_launching_user_is_a_400_and_an_audit_record(
    admin_api: APIClient, api: APIClient, teammate: User
) -> None:
    create(admin_api, allowed_users=["tomas"])
    response = launch(api, ["HF_TOKEN"])
    assert response.status_code == 400
    assert response.json()["secrets"] == ["'HF_TOKEN' is not allowed to you"]
    record = AuditRecord.objects.get(action="secret.use")
    assert (record.actor, record.outcome, record.target_type) == ("olivia", "denied", "secret")
    assert record.details["name"] == "HF_TOKEN"
    assert not Run.objects.exists()


@pytest.mark.parametrize("grant", [{"allowed_users": ["olivia"]}, {"allowed_roles": ["operator"]}])
def test_a_secret_allowed_by_name_or_by_role_launches_and_the_run_stores_only_names(
    admin_api: APIClient, api: APIClient, owner: User, grant: dict[str, Any]
) -> None:
    create(admin_api, **grant)
    response = launch(api, ["HF_TOKEN", "HF_TOKEN"])
    assert response.status_code == 201, response.content
    run = Run.objects.get(pk=response.json()["id"])
    assert run.secrets == ["HF_TOKEN"]
    assert AuditRecord.objects.get(action="run.launch").details["secrets"] == ["HF_TOKEN"]
    assert VALUE not in everything_stored()


def test_admins_may_use_any_secret(admin: User, admin_api: APIClient) -> None:
    create(admin_api)
    assert launch(admin_api, ["HF_TOKEN"]).status_code == 201


# -- the worker's side: resolving at claim time -----------------------------------------------


def claimed_run(owner: User, names: list[str]) -> Any:
    run = Run.objects.create(name="c", owner=owner, program="scripted", queue="test-secrets", secrets=names)
    claim = claim_run(run.pk, "test-worker")
    assert claim is not None
    return claim


def test_a_claimed_run_gets_its_values_and_each_use_is_audited_with_the_run(
    admin_api: APIClient, owner: User
) -> None:
    create(admin_api, allowed_users=["olivia"])
    create(admin_api, name="WANDB_API_KEY", value=OTHER, allowed_roles=["operator"])
    claim = claimed_run(owner, ["HF_TOKEN", "WANDB_API_KEY"])
    values, refused = resolve_run_secrets(claim)
    assert refused is None
    assert values == {"HF_TOKEN": VALUE, "WANDB_API_KEY": OTHER}
    uses = AuditRecord.objects.filter(action="secret.use", outcome="success").order_by("id")
    assert [(u.details["name"], u.details["run_id"], u.actor) for u in uses] == [
        ("HF_TOKEN", claim.run_id, "olivia"),
        ("WANDB_API_KEY", claim.run_id, "olivia"),
    ]
    assert all(s.last_used_at is not None for s in Secret.objects.all())
    assert VALUE not in everything_stored() and OTHER not in everything_stored()


def test_a_secret_withdrawn_after_the_launch_fails_the_run_as_a_config_error(
    admin_api: APIClient, owner: User
) -> None:
    create(admin_api, allowed_users=["olivia"])
    claim = claimed_run(owner, ["HF_TOKEN"])
    admin_api.patch("/api/v1/secrets/HF_TOKEN/", {"allowed_users": []}, format="json")
    values, refused = resolve_run_secrets(claim)
    assert values == {}
    assert refused is not None
    assert (refused.error_kind, refused.error_code) == (ErrorKind.CONFIG, "secret_not_allowed")
    assert AuditRecord.objects.filter(action="secret.use", outcome="denied").count() == 1


def test_a_deleted_secret_fails_the_run_and_a_worker_without_the_key_fails_only_the_attempt(
    admin_api: APIClient, owner: User, settings: Any
) -> None:
    create(admin_api, allowed_users=["olivia"])
    create(admin_api, name="GONE_SOON", value=OTHER, allowed_users=["olivia"])
    claim = claimed_run(owner, ["HF_TOKEN"])
    settings.CONTROLPLANE_SECRETS_KEY = Fernet.generate_key().decode()
    _, refused = resolve_run_secrets(claim)
    assert refused is not None
    assert (refused.error_kind, refused.error_code) == (ErrorKind.INFRASTRUCTURE, "secret_undecryptable")
    settings.CONTROLPLANE_SECRETS_KEY = ""
    _, refused = resolve_run_secrets(claim)
    assert refused is not None and refused.error_code == "secrets_not_configured"
    admin_api.delete("/api/v1/secrets/GONE_SOON/")
    _, refused = resolve_run_secrets(claimed_run(owner, ["GONE_SOON"]))
    assert refused is not None
    assert (refused.error_kind, refused.error_code) == (ErrorKind.CONFIG, "unknown_secret")


# -- pages ------------------------------------------------------------------------------------


@pytest.fixture
def admin_page(admin: User) -> Client:
    client = Client()
    client.force_login(admin)
    return client


def test_admins_create_change_and_delete_secrets_in_the_pages(admin_page: Client, owner: User) -> None:
    page = admin_page.get("/secrets/new/")
    assert page.status_code == 200 and b"csrfmiddlewaretoken" in page.content
    created = admin_page.post(
        "/secrets/new/", {"name": "HF_TOKEN", "value": VALUE, "allowed_users": ["olivia"]}
    )
    assert created.status_code == 302 and created["Location"] == "/secrets/"
    listing = admin_page.get("/secrets/")
    html = listing.content.decode()
    assert "HF_TOKEN" in html and "olivia" in html and VALUE not in html
    edit = admin_page.get("/secrets/HF_TOKEN/").content.decode()
    assert VALUE not in edit and 'type="password"' in edit and 'value=""' in edit
    # An empty value keeps the current one; the users change.
    assert (
        admin_page.post("/secrets/HF_TOKEN/", {"value": "", "allowed_roles": ["operator"]}).status_code == 302
    )
    secret = Secret.objects.get()
    assert crypto.keyring().decrypt(secret.ciphertext) == VALUE
    assert (list(secret.allowed_users.all()), secret.allowed_roles) == ([], ["operator"])
    assert admin_page.post("/secrets/HF_TOKEN/", {"value": OTHER}).status_code == 302
    assert crypto.keyring().decrypt(Secret.objects.get().ciphertext) == OTHER
    confirm = admin_page.get("/secrets/HF_TOKEN/delete/")
    assert confirm.status_code == 200 and b"confirm-delete" in confirm.content
    assert Secret.objects.exists()  # asking is not deleting
    assert admin_page.post("/secrets/HF_TOKEN/delete/").status_code == 302
    assert not Secret.objects.exists()
    actions = list(AuditRecord.objects.filter(action__startswith="secret.").values_list("action", flat=True))
    assert actions == ["secret.create", "secret.update", "secret.update", "secret.delete"]


def test_a_bad_form_shows_the_errors_and_never_echoes_the_value(admin_page: Client) -> None:
    response = admin_page.post("/secrets/new/", {"name": "bad name", "value": "short7!"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "not a valid environment variable name" in html and "at least 8 characters" in html
    assert "short7!" not in html
    assert not Secret.objects.exists()


def test_the_pages_are_for_admins_only_and_the_nav_shows_them_only_to_admins(
    admin_page: Client, owner: User
) -> None:
    operator = Client()
    operator.force_login(owner)
    assert operator.get("/secrets/").status_code == 403
    assert operator.post("/secrets/new/", {"name": "MINE", "value": VALUE}).status_code == 403
    assert not Secret.objects.exists()
    assert Client().get("/secrets/").status_code == 302  # to sign in
    assert admin_page.get("/secrets/NOPE/").status_code == 404
    assert admin_page.get("/secrets/NO%00PE/").status_code == 400  # NUL in the path (ops.inputs)
    assert admin_page.get("/secrets/NOPE/delete/").status_code == 404
    assert b'href="/secrets/"' in admin_page.get("/").content
    assert b'href="/secrets/"' not in operator.get("/").content


def test_a_page_post_without_the_csrf_token_is_refused(admin: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    assert client.post("/secrets/new/", {"name": "HF_TOKEN", "value": VALUE}).status_code == 403
    assert not Secret.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "1BAD", "value": "long-enough-value"}, "name"),
        ({"name": "has space", "value": "long-enough-value"}, "name"),
        ({"name": "SHORT_VALUE", "value": "1234567"}, "value"),
    ],
)
def test_refused_secret_input_is_a_400_and_an_audit_record(body: dict[str, Any], field: str, db: Any) -> None:
    from tests.conftest import make_user

    admin = APIClient()
    admin.force_authenticate(make_user("auditor", "admin"))
    response = admin.post("/api/v1/secrets/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    record = AuditRecord.objects.filter(action="secret.create", outcome="denied").latest("id")
    assert field in record.details["errors"]
    assert body["value"] not in str(record.details)
