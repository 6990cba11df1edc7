"""The program catalog: admins register, edit, retire and restore programs through the API; the
TOML file seeds it without overwriting an admin's edit; every write is audited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from runs.catalog import seed_programs
from runs.models import ProgramDefinition, ProgramSource, Run, RunStatus
from runs.programs import get_program
from tests.conftest import make_user

FINETUNE: dict[str, Any] = {
    "name": "finetune",
    "command": ["{python}", "/srv/train/finetune.py"],
    "description": "Fine-tune a model",
    "params_schema": {
        "type": "object",
        "properties": {
            "lr": {"type": "number", "default": 0.001, "exclusiveMinimum": 0},
            "steps": {"type": "integer", "default": 100, "minimum": 1},
        },
    },
    "resources": {"pool": "default", "gpus": 0},
    "env": {"MODE": "fast"},
}


def bearer(user: User, scopes: list[str] | None = None) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(user, scopes=scopes).plaintext}")
    return client


@pytest.fixture
def admin(db: Any) -> User:
    return make_user("ada", "admin")


@pytest.fixture
def admin_api(admin: User) -> APIClient:
    return bearer(admin)


def register(client: APIClient, **changes: Any) -> Any:
    return client.post("/api/v1/programs/", {**FINETUNE, **changes}, format="json")


def records(action: str) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(action=action).order_by("pk"))


def test_an_admin_registers_a_program_that_operators_can_list_and_launch(
    admin_api: APIClient, api: APIClient
) -> None:
    created = register(admin_api)
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["source"], body["version"], body["retired"]) == ("api", 1, False)
    assert body["command"] == ["{python}", "/srv/train/finetune.py"]  # admins see how it runs
    listed = {p["name"]: p for p in api.get("/api/v1/programs/").json()}
    assert listed["finetune"]["defaults"] == {"lr": 0.001, "steps": 100}
    assert "command" not in listed["finetune"] and "env" not in listed["finetune"]
    launched = api.post(
        "/api/v1/runs/", {"name": "ft", "program": "finetune", "params": {"steps": 5}}, format="json"
    )
    assert launched.status_code == 201, launched.json()
    assert launched.json()["params"] == {"lr": 0.001, "steps": 5}
    record = records("program.create")[-1]
    assert (record.actor, record.target_id, record.outcome) == ("ada", str(body_id("finetune")), "success")
    assert record.details["env"] == ["MODE"]  # names, never values


def body_id(name: str) -> int:
    return ProgramDefinition.objects.get(name=name).pk


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewers_and_operators_cannot_write_the_catalog(db: Any, role: str) -> None:
    client = bearer(make_user(f"someone-{role}", role))
    assert register(client).status_code == 403
    assert client.patch("/api/v1/programs/scripted/", {"description": "x"}, format="json").status_code == 403
    assert client.post("/api/v1/programs/scripted/retire/").status_code == 403
    assert (
        client.post(
            "/api/v1/programs/infer-schema/", {"command": ["{python}", "x.py"]}, format="json"
        ).status_code
        == 403
    )
    assert not ProgramDefinition.objects.exists()
    assert records("access.denied")[-1].details["action"] == "program.manage"


def test_an_admin_token_without_the_admin_scope_cannot_write(admin: User) -> None:
    assert register(bearer(admin, ["read", "launch"])).status_code == 403


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"params_schema": {"type": "object", "properties": {"lr": {"type": "float", "default": 1}}}},
            "params_schema.lr.type",
        ),
        (
            {"params_schema": {"type": "object", "properties": {"lr": {"type": "number"}}}},
            "params_schema.lr.default",
        ),
        (
            {
                "params_schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer", "default": 0, "minimum": 1}},
                }
            },
            "params_schema.n.default",
        ),
        (
            {
                "params_schema": {
                    "type": "object",
                    "properties": {"m": {"type": "string", "default": "a", "enum": "a"}},
                }
            },
            "params_schema.m.enum",
        ),
        ({"params_schema": {"type": "array"}}, "params_schema.type"),
        ({"params_schema": []}, "params_schema"),
        ({"command": []}, "command"),
        ({"command": "python train.py"}, "command"),
        ({"name": "Bad Name"}, "name"),
        ({"name": "code"}, "name"),
        ({"name": "external"}, "name"),
        ({"name": "tinygpt"}, "name"),
        ({"launcher": "mpirun"}, "launcher"),
        ({"nproc_per_node": 2}, "nproc_per_node"),
        ({"resources": {"gpus": -1}}, "resources.gpus"),
        ({"env": {"A": 1}}, "env"),
        ({"queue": "no spaces allowed"}, "queue"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_definition_is_a_400_naming_the_field(
    admin_api: APIClient, changes: dict[str, Any], field: str
) -> None:
    response = register(admin_api, **changes)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not ProgramDefinition.objects.filter(name="finetune").exists()


def test_a_refused_registration_is_audited_as_denied(admin_api: APIClient) -> None:
    register(admin_api, command=[])
    record = records("program.create")[-1]
    assert record.outcome == "denied"
    assert "command" in record.details["errors"]


def test_a_name_is_registered_once(admin_api: APIClient) -> None:
    assert register(admin_api).status_code == 201
    again = register(admin_api)
    assert again.status_code == 400
    assert "already exists" in again.json()["name"][0]


def test_an_edit_bumps_the_version_and_is_audited(admin_api: APIClient, api: APIClient) -> None:
    register(admin_api)
    schema = {"type": "object", "properties": {"lr": {"type": "number", "default": 0.01}}}
    edited = admin_api.patch(
        "/api/v1/programs/finetune/", {"params_schema": schema, "queue": "gpu"}, format="json"
    )
    assert edited.status_code == 200, edited.json()
    assert (edited.json()["version"], edited.json()["queue"], edited.json()["defaults"]) == (
        2,
        "gpu",
        {"lr": 0.01},
    )
    assert edited.json()["env"] == {"MODE": "fast"}  # untouched fields stay
    record = records("program.update")[-1]
    assert record.details["changed"] == ["params", "queue"]
    unchanged = admin_api.patch("/api/v1/programs/finetune/", {"queue": "gpu"}, format="json")
    assert unchanged.json()["version"] == 2
    bad = admin_api.patch("/api/v1/programs/finetune/", {"command": [""]}, format="json")
    assert bad.status_code == 400 and "command" in bad.json()
    assert records("program.update")[-1].outcome == "denied"
    assert admin_api.patch("/api/v1/programs/finetune/", {"name": "other"}, format="json").status_code == 400
    assert admin_api.patch("/api/v1/programs/nope/", {"queue": "x"}, format="json").status_code == 404
    assert admin_api.patch("/api/v1/programs/tinygpt/", {"queue": "x"}, format="json").status_code == 400


def test_a_retired_program_leaves_the_list_and_refuses_launches_but_old_runs_keep_it(
    admin_api: APIClient, api: APIClient, owner: User
) -> None:
    register(admin_api)
    old = Run.objects.create(
        name="old", owner=owner, program="finetune", queue="training", status=RunStatus.FAILED
    )
    retired = admin_api.post("/api/v1/programs/finetune/retire/")
    assert retired.status_code == 200
    assert retired.json()["retired"] is True
    assert "finetune" not in {p["name"] for p in api.get("/api/v1/programs/").json()}
    assert "finetune" in {p["name"] for p in api.get("/api/v1/programs/?include_retired=true").json()}
    assert api.get("/api/v1/programs/finetune/").json()["retired"] is True  # old runs name it
    launch = api.post("/api/v1/runs/", {"name": "x", "program": "finetune"}, format="json")
    assert launch.status_code == 400
    assert "retired" in launch.json()["program"][0]
    retry = api.post(f"/api/v1/runs/{old.pk}/retry/")
    assert retry.status_code == 409 and "retired" in retry.json()["detail"]
    assert get_program("finetune", include_retired=True) is not None  # what the supervisor reads
    assert api.get(f"/api/v1/runs/{old.pk}/").status_code == 200
    restored = admin_api.post("/api/v1/programs/finetune/restore/")
    assert restored.json()["retired"] is False
    assert api.post("/api/v1/runs/", {"name": "x", "program": "finetune"}, format="json").status_code == 201
    assert [r.action for r in AuditRecord.objects.filter(action__startswith="program.r")] == [
        "program.retire",
        "program.restore",
    ]
    assert admin_api.post("/api/v1/programs/tinygpt/retire/").status_code == 400


SEED = """
[programs.seeded]
command = ["{python}", "-m", "seeded"]
description = "from the file"
[programs.seeded.params]
n = { type = "integer", default = 1 }
[programs.other]
command = ["/bin/true"]
"""


def test_the_seed_is_idempotent_and_never_overwrites_an_admins_edit(
    admin_api: APIClient, tmp_path: Path
) -> None:
    path = tmp_path / "programs.toml"
    path.write_text(SEED)
    first = seed_programs(path)
    assert (sorted(first.created), first.updated) == (["other", "seeded"], [])
    assert seed_programs(path).unchanged == ["seeded", "other"]
    row = ProgramDefinition.objects.get(name="seeded")
    assert (row.source, row.version, row.command) == (ProgramSource.SEED, 1, ["{python}", "-m", "seeded"])
    # The file changes: the seed's own rows follow it.
    path.write_text(SEED.replace("default = 1", "default = 2"))
    assert seed_programs(path).updated == ["seeded"]
    assert ProgramDefinition.objects.get(name="seeded").version == 2
    # An admin edits one and retires the other: the file no longer wins, on any later seed.
    admin_api.patch("/api/v1/programs/seeded/", {"description": "the admin's"}, format="json")
    admin_api.post("/api/v1/programs/other/retire/")
    path.write_text(SEED.replace("from the file", "the file's new words"))
    report = seed_programs(path)
    assert sorted(report.kept) == ["other", "seeded"]
    assert ProgramDefinition.objects.get(name="seeded").description == "the admin's"
    assert ProgramDefinition.objects.get(name="other").retired_at is not None
    assert [r.details["change"] for r in records("program.seed")] == ["created", "created", "updated"]


def test_the_seed_command_reports_and_refuses_a_bad_file(db: Any, tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "programs.toml"
    path.write_text(SEED)
    call_command("seed_programs", "--file", str(path))
    assert "created: seeded, other" in capsys.readouterr().out
    path.write_text("[programs.x]\ncommand = []\n")
    with pytest.raises(Exception, match=r"programs\.x\.command must be a non-empty list"):
        call_command("seed_programs", "--file", str(path))


def test_a_file_program_not_seeded_yet_is_adopted_when_an_admin_edits_it(admin_api: APIClient) -> None:
    before = get_program("envprint")
    assert before is not None and before.source == "file"
    edited = admin_api.patch("/api/v1/programs/envprint/", {"description": "edited"}, format="json")
    assert edited.status_code == 200, edited.json()
    assert (edited.json()["source"], edited.json()["version"]) == ("api", 2)
    assert ProgramDefinition.objects.get(name="envprint").command == [
        "{python}",
        "-m",
        "tests.fixtures.env_program",
    ]
    program = get_program("envprint")
    assert program is not None and program.description == "edited"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"description": "a\x00b"}, "description"),
        ({"env": {"A": "x\x00"}}, "env"),
        (
            {"params_schema": {"type": "object", "properties": {"s": {"type": "string", "default": "\x00"}}}},
            "params_schema",
        ),
    ],
)
def test_nul_characters_are_a_400_not_a_database_error(
    admin_api: APIClient, changes: dict[str, Any], field: str
) -> None:
    response = register(admin_api, **changes)
    assert response.status_code == 400
    assert any(key.startswith(field) for key in response.json()), response.json()
