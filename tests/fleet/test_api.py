"""The fleet in the API: launch fields and their 400s, the run JSON, workers, drain, quotas."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from fleet.models import Quota, Worker
from fleet.scheduler import schedule_pass
from tests.conftest import make_user
from tests.fleet.helpers import gpu_worker

pytestmark = pytest.mark.django_db


def client_for(role: str, name: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(make_user(name, role)).plaintext}")
    return client


def launch(client: APIClient, **fields: Any) -> Any:
    return client.post("/api/v1/runs/", {"name": "r", "program": "scripted", **fields}, format="json")


def test_bad_fleet_fields_are_400s_naming_the_field() -> None:
    gpu_worker("w", 4)
    operator = client_for("operator", "olivia")
    cases: dict[str, dict[str, Any]] = {
        "resources.gpus": {"resources": {"pool": "a100", "gpus": 16}},
        "resources.pool": {"resources": {"pool": "nowhere", "gpus": 1}},
        "priority": {"priority": 90},  # above the operator's maximum (70)
    }
    for field, body in cases.items():
        response = launch(operator, **body)
        assert response.status_code == 400 and field in response.json(), (field, response.json())
    assert "resources.gpus" in launch(operator, resources={"pool": "a100", "gpus": -1}).json()
    Quota.objects.create(user=User.objects.get(username="olivia"), max_gpus=2)
    over_quota = launch(operator, resources={"pool": "a100", "gpus": 3})
    assert over_quota.status_code == 400
    assert over_quota.json()["resources.gpus"] == ["needs 3 GPUs; your quota is 2 GPUs at once"]
    assert "priority" in launch(operator, priority=101).json()
    assert (
        launch(client_for("admin", "ada"), priority=100, resources={"pool": "a100", "gpus": 4}).status_code
        == 201
    )


def test_a_programs_own_resources_apply_where_the_launch_names_none(tmp_path: Any, settings: Any) -> None:
    programs = tmp_path / "programs.toml"
    programs.write_text(
        '[programs.big]\ncommand = ["{python}", "-c", "pass"]\nresources = { pool = "a100", gpus = 2 }\n'
    )
    settings.PROGRAMS_FILE = str(programs)
    gpu_worker("w", 4)
    operator = client_for("operator", "olivia")
    described = operator.get("/api/v1/programs/big/").json()
    assert described["resources"] == {"pool": "a100", "gpus": 2}
    as_declared = operator.post("/api/v1/runs/", {"name": "r", "program": "big"}, format="json").json()
    assert as_declared["resources"] == {"pool": "a100", "gpus": 2}
    fewer = operator.post(
        "/api/v1/runs/", {"name": "r", "program": "big", "resources": {"gpus": 1}}, format="json"
    ).json()
    assert fewer["resources"] == {"pool": "a100", "gpus": 1}  # the pool still the program's
    too_big = operator.post(
        "/api/v1/runs/", {"name": "r", "program": "big", "resources": {"gpus": 8}}, format="json"
    )
    assert too_big.status_code == 400 and "resources.gpus" in too_big.json()


def test_the_run_json_says_where_it_runs_or_why_it_waits() -> None:
    gpu_worker("w", 2)
    operator = client_for("operator", "olivia")
    first = launch(operator, resources={"pool": "a100", "gpus": 2}, priority=60).json()
    second = launch(operator, resources={"pool": "a100", "gpus": 2}).json()
    schedule_pass()
    first = operator.get(f"/api/v1/runs/{first['id']}/").json()
    assert first["assigned"] == {"worker": "w", "devices": [0, 1], "slots": 0}
    assert (first["priority"], first["preemptible"], first["resources"]) == (
        60,
        True,
        {"pool": "a100", "gpus": 2},
    )
    second = operator.get(f"/api/v1/runs/{second['id']}/").json()
    assert second["assigned"] is None
    assert (second["queue_position"], second["waiting_reason"]) == (
        0,
        "next in a100, waiting for devices to free up",
    )
    listed = operator.get("/api/v1/runs/").json()["results"]
    assert {run["id"]: run["assigned"] is not None for run in listed} == {
        first["id"]: True,
        second["id"]: False,
    }


def test_workers_drain_and_quotas() -> None:
    worker = gpu_worker("w", 2)
    admin, viewer = client_for("admin", "ada"), client_for("viewer", "vic")
    listed = viewer.get("/api/v1/workers/").json()["results"]
    assert listed[0]["state"] == "active" and [d["index"] for d in listed[0]["devices"]] == [0, 1]
    assert viewer.post(f"/api/v1/workers/{worker.pk}/drain/").status_code == 403
    assert admin.post(f"/api/v1/workers/{worker.pk}/drain/").json()["state"] == "draining"
    assert Worker.objects.get(pk=worker.pk).state == "draining"
    olivia = make_user("olivia", "operator")
    assert admin.patch(f"/api/v1/quotas/{olivia.pk}/", {"max_gpus": 2}, format="json").json()["max_gpus"] == 2
    assert admin.patch(f"/api/v1/quotas/{olivia.pk}/", {"max_gpus": -1}, format="json").status_code == 400
    rows = {row["user"]: row for row in admin.get("/api/v1/quotas/").json()["results"]}
    assert rows["olivia"]["max_gpus"] == 2 and rows["ada"]["default"] is True
    assert [row["user"] for row in viewer.get("/api/v1/quotas/").json()["results"]] == ["vic"]


def test_the_run_page_shows_resources_assignment_and_why_it_waits(client: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    gpu_worker("w", 2)
    gone = gpu_worker("gone", 1, pool="h100")  # known pool, but its only worker is lost
    Worker.objects.filter(pk=gone.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    operator = client_for("operator", "olivia")
    placed = launch(operator, resources={"pool": "a100", "gpus": 2}).json()
    waiting = launch(operator, resources={"pool": "h100", "gpus": 1}).json()
    schedule_pass()
    from django.contrib.auth.models import User

    client.force_login(User.objects.get(username="olivia"))
    page = client.get(f"/runs/{placed['id']}/").content.decode()
    assert "a100 · 2 GPUs · priority 50" in page and "GPU 0, 1" in page
    page = client.get(f"/runs/{waiting['id']}/").content.decode()
    assert "Waiting: no live worker in pool h100" in page
