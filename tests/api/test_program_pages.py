"""The Programs pages through Django's test client: errors by field, the schema read from a script,
editing a program of the file, restoring one; and the seed that `migrate` runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.test import Client

from runs.apps import seed_programs_after_migrate
from runs.models import ProgramDefinition, ProgramSource
from tests.conftest import make_user

FORM = {
    "name": "pageprog",
    "description": "from a form",
    "command": "{python}\n/srv/train.py",
    "params_schema": json.dumps({"type": "object", "properties": {"lr": {"type": "number", "default": 0.1}}}),
    "launcher": "direct",
    "env": "MODE=fast\nLEVEL=2",
    "pool": "",
    "gpus": "",
    "queue": "",
}


def admin_client(db: Any) -> Client:
    client = Client()
    client.force_login(make_user("ada", "admin"))
    return client


def test_a_form_registers_a_program_with_its_env_and_command_lines(db: Any) -> None:
    response = admin_client(db).post("/programs/new/", FORM)
    assert response.status_code == 302
    row = ProgramDefinition.objects.get(name="pageprog")
    assert (row.command, row.env, row.params["lr"]["default"]) == (
        ["{python}", "/srv/train.py"],
        {"MODE": "fast", "LEVEL": "2"},
        0.1,
    )


def test_errors_are_shown_by_field_and_nothing_is_saved(db: Any) -> None:
    client = admin_client(db)
    bad = {**FORM, "params_schema": "{not json", "gpus": "two", "env": "NOEQUALS"}
    page = client.post("/programs/new/", bad).content.decode()
    assert 'id="id_params_schema-error"' in page and "is not JSON" in page
    assert "must be a whole number" in page and "is not KEY=VALUE" in page
    schema = json.dumps({"type": "object", "properties": {"lr": {"type": "text", "default": 1}}})
    page = client.post("/programs/new/", {**FORM, "params_schema": schema, "command": ""}).content.decode()
    assert "params_schema.lr.type" in page and "id_command-error" in page
    assert not ProgramDefinition.objects.exists()


def test_the_page_reads_the_schema_from_the_script(db: Any, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--epochs', type=int, default=7)\np.parse_args()\n"
    )
    page = admin_client(db).post("/programs/new/", {**FORM, "command": f"{{python}}\n{script}", "infer": "1"})
    assert page.status_code == 200
    assert "&quot;epochs&quot;" in page.content.decode()
    assert "1 params read from the script (argparse)" in page.content.decode()
    assert not ProgramDefinition.objects.exists()  # reading is not saving


def test_an_admin_edits_a_program_of_the_file_then_retires_and_restores_it(db: Any) -> None:
    client = admin_client(db)
    form = client.get("/programs/scripted/edit/")
    assert form.status_code == 200 and "tests.fixtures.scripted_program" in form.content.decode()
    edited = client.post(
        "/programs/scripted/edit/",
        {**FORM, "name": "ignored", "command": "{python}\n-m\ntests.fixtures.scripted_program"},
    )
    assert edited.status_code == 302
    row = ProgramDefinition.objects.get(name="scripted")
    assert (row.source, row.description, row.version) == (ProgramSource.API, "from a form", 2)
    client.post("/programs/scripted/retire/")
    assert ProgramDefinition.objects.get(name="scripted").retired_at is not None
    client.post("/programs/scripted/retire/", {"restore": "true"})
    assert ProgramDefinition.objects.get(name="scripted").retired_at is None
    assert client.get("/programs/tinygpt/edit/").status_code == 200  # shown; saving is refused
    assert client.post("/programs/tinygpt/edit/", FORM).status_code == 200


def test_migrate_seeds_the_catalog_but_a_flush_does_not(db: Any, settings: Any) -> None:
    settings.PROGRAMS_SEED_ON_MIGRATE = True
    seed_programs_after_migrate(plan=None)  # a test's flush
    assert not ProgramDefinition.objects.exists()
    seed_programs_after_migrate(plan=[])
    assert set(ProgramDefinition.objects.values_list("name", flat=True)) >= {
        "scripted",
        "envprint",
        "webdemo",
    }
    assert not ProgramDefinition.objects.filter(name="tinygpt").exists()
    settings.PROGRAMS_SEED_ON_MIGRATE = False
    ProgramDefinition.objects.all().delete()
    seed_programs_after_migrate(plan=[])
    assert not ProgramDefinition.objects.exists()
