"""The launch form's fleet fields (validated by the rule the API uses) and the waiting reason in
the runs list and its live poll."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from fleet.scheduler import schedule_pass
from runs.models import Run
from tests.conftest import make_user
from tests.fleet.helpers import gpu_worker, waiting_run

pytestmark = pytest.mark.django_db


def signed_in(role: str, name: str) -> tuple[Client, User]:
    user = make_user(name, role)
    client = Client()
    client.force_login(user)
    return client, user


def post_launch(client: Client, **fields: str) -> tuple[int, str]:
    response = client.post("/runs/new/", {"program": "scripted", "name": "form-run", **fields})
    return response.status_code, response.content.decode()


def field_error(html: str, input_id: str) -> str:
    found = re.search(
        rf'<p class="field-error" id="{input_id}-error"><span aria-hidden="true">⚠ </span>([^<]*)</p>', html
    )
    return unescape(found.group(1)) if found else ""


# -- the launch form -------------------------------------------------------------------------------


def test_the_form_offers_pool_gpus_priority_and_preemptible_with_their_defaults() -> None:
    gpu_worker("gpu-1", 4, pool="a100")
    client, _ = signed_in("operator", "olivia")
    html = client.get("/runs/new/").content.decode()
    assert 'name="resources.pool" id="id_pool" value=""' in html
    assert '<option value="a100">a100 (up to 4 GPUs a run)</option>' in html
    assert 'name="priority" id="id_priority" value="50"' in html
    assert "0 to 70 for your role" in html  # CONTROLPLANE_MAX_PRIORITY_OPERATOR's default
    assert re.search(r'id="id_preemptible" value="true" checked', html)
    admin, _ = signed_in("admin", "ada")
    assert "0 to 100 for your role" in admin.get("/runs/new/").content.decode()


def test_a_valid_launch_stores_the_fleet_fields() -> None:
    gpu_worker("gpu-1", 4, pool="a100")
    client, _ = signed_in("operator", "olivia")
    response = client.post(
        "/runs/new/",
        {
            "program": "scripted",
            "name": "form-run",
            "resources.pool": "a100",
            "resources.gpus": "2",
            "priority": "65",
            "preemptible": "false",  # the hidden input alone: the box was left unticked
        },
    )
    run = Run.objects.get(name="form-run")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert (run.resources, run.priority, run.preemptible) == ({"pool": "a100", "gpus": 2}, 65, False)


def test_empty_fields_take_the_defaults_and_a_ticked_box_is_preemptible() -> None:
    client, _ = signed_in("operator", "olivia")
    status, _ = post_launch(client, **{"resources.pool": "", "resources.gpus": "", "priority": ""})
    run = Run.objects.get(name="form-run")
    assert status == 200 or status == 302
    assert (run.resources, run.priority, run.preemptible) == ({"pool": "default", "gpus": 0}, 50, True)


@pytest.mark.parametrize(
    ("fields", "input_id", "message"),
    [
        (
            {"resources.pool": "a100", "resources.gpus": "16"},
            "id_gpus",
            "needs 16 GPUs; the largest a100 worker has 4",
        ),
        (
            {"resources.pool": "nowhere", "resources.gpus": "1"},
            "id_pool",
            "unknown pool 'nowhere'; known pools: a100",
        ),
        ({"resources.pool": "Not A Pool!"}, "id_pool", "a pool name: lowercase letters"),
        ({"resources.gpus": "-1"}, "id_gpus", "must be between 0 and 64"),
        ({"resources.gpus": "two"}, "id_gpus", "must be an integer"),
        ({"priority": "90"}, "id_priority", "your role may launch with priority at most 70"),
        ({"priority": "101"}, "id_priority", "must be between 0 and 100"),
        ({"priority": "high"}, "id_priority", "must be an integer"),
    ],
)
def test_bad_fleet_fields_are_form_errors_naming_the_field(
    fields: dict[str, str], input_id: str, message: str
) -> None:
    gpu_worker("gpu-1", 4, pool="a100")
    client, _ = signed_in("operator", "olivia")
    status, html = post_launch(client, **fields)
    assert status == 200
    assert field_error(html, input_id).startswith(message), html[html.find("error-summary") :][:600]
    assert f'href="#{input_id}"' in html  # listed in the summary, linking to the field
    assert 'aria-invalid="true"' in html
    assert not Run.objects.exists()
    # The typed values are shown again, not reset to the defaults.
    for name, value in fields.items():
        assert re.search(
            rf'name="{re.escape(name)}" id="id_\w+" value="{re.escape(value)}"', unescape(html)
        ), name


def test_the_form_and_the_api_give_the_same_message() -> None:
    from rest_framework.test import APIClient

    from accounts.tokens import do_issue_token

    gpu_worker("gpu-1", 4, pool="a100")
    client, user = signed_in("operator", "olivia")
    _, html = post_launch(client, **{"resources.pool": "a100", "resources.gpus": "16"})
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(user).plaintext}")
    body = {"name": "r", "program": "scripted", "resources": {"pool": "a100", "gpus": 16}}
    refused = api.post("/api/v1/runs/", body, format="json")
    assert refused.status_code == 400
    assert field_error(html, "id_gpus") == refused.json()["resources.gpus"][0]


def test_a_clone_keeps_the_fleet_fields_of_its_run() -> None:
    gpu_worker("gpu-1", 4, pool="a100")
    client, owner = signed_in("operator", "olivia")
    run = waiting_run(owner, pool="a100", gpus=3, priority=40, preemptible=False)
    html = client.get(f"/runs/new/?clone={run.pk}").content.decode()
    assert 'id="id_pool" value="a100"' in html and 'id="id_gpus" value="3"' in html
    assert 'id="id_priority" value="40"' in html
    assert not re.search(r'id="id_preemptible" value="true" checked', html)


# -- waiting reasons -------------------------------------------------------------------------------


def test_the_runs_list_says_why_a_queued_run_waits_and_nothing_for_others() -> None:
    owner = make_user("olivia", "operator")
    gpu_worker("gpu-1", 2, pool="a100")
    placed = waiting_run(owner, pool="a100", gpus=2, name="placed")
    blocked = waiting_run(owner, pool="a100", gpus=2, name="blocked")
    behind = waiting_run(owner, pool="a100", gpus=1, name="behind")
    schedule_pass()
    client, _ = signed_in("viewer", "vera")
    html = client.get("/").content.decode()

    def line(run: Run) -> str:
        row = html[html.index(f'data-run-id="{run.pk}"') :]
        row = row[: row.index("</tr>")]
        found = re.search(
            r'<span class="waiting-line muted" data-live="waiting"( hidden)?>([^<]*)</span>', row
        )
        assert found, row
        return "" if found.group(1) else found.group(2)

    assert line(placed) == ""  # admitted: it holds its devices and waits only for its worker
    assert line(blocked) == "next in a100, waiting for devices to free up"
    assert line(behind) == "1 run ahead of it in a100"
    # A reason the scheduler stored is shown as it is.
    Run.objects.filter(pk=behind.pk).update(waiting_reason="quota: olivia uses 4 of 4 GPUs")
    html = client.get("/").content.decode()
    assert line(behind) == "quota: olivia uses 4 of 4 GPUs"


def test_the_live_poll_carries_the_waiting_reason() -> None:
    owner = make_user("olivia", "operator")
    gpu_worker("gpu-1", 2, pool="a100")
    first = waiting_run(owner, pool="a100", gpus=2)
    second = waiting_run(owner, pool="a100", gpus=2)
    schedule_pass()
    client, _ = signed_in("viewer", "vera")
    states = client.get(f"/api/v1/runs/states/?ids={first.pk},{second.pk}").json()
    reasons = {run["id"]: run["waiting_reason"] for run in states["runs"]}
    second.refresh_from_db()
    api_reason = client.get(f"/api/v1/runs/{second.pk}/").json()["waiting_reason"]
    assert reasons == {first.pk: "", second.pk: api_reason} and api_reason


def test_the_run_page_shows_the_queue_position_of_a_waiting_run() -> None:
    owner = make_user("olivia", "operator")
    ahead = waiting_run(owner, pool="a100", gpus=1, priority=60)
    behind = waiting_run(owner, pool="a100", gpus=1)
    client, _ = signed_in("viewer", "vera")
    page = client.get(f"/runs/{behind.pk}/").content.decode()
    assert '<dd class="num" id="queue-position">1 run ahead in a100</dd>' in page
    assert "Waiting: 1 run ahead of it in a100" in page
    first = client.get(f"/runs/{ahead.pk}/").content.decode()
    assert '<dd class="num" id="queue-position">next in a100</dd>' in first


def test_queue_positions_read_in_bulk_equal_the_count_of_each_run() -> None:
    from fleet.selectors import _queue_position, _queue_positions

    owner = make_user("olivia", "operator")
    runs = [
        waiting_run(owner, pool=pool, gpus=1, priority=priority)
        for pool in ("a100", "h100")
        for priority in (50, 70, 50, 10, 70, 90, 50)
    ]
    runs.append(waiting_run(owner, pool="default", gpus=0))
    # Two runs of one age and priority: neither is ahead of the other, in either reading.
    Run.objects.filter(pk=runs[2].pk).update(created_at=runs[0].created_at)
    fresh = list(Run.objects.filter(pk__in=[run.pk for run in runs]))
    assert _queue_positions(fresh) == {run.pk: _queue_position(run) for run in fresh}
    assert sorted(_queue_positions(fresh).values())[:3] == [0, 0, 0]  # each pool's head


def test_the_runs_list_and_its_poll_read_waiting_reasons_in_a_fixed_number_of_queries() -> None:
    owner = make_user("olivia", "operator")
    client, _ = signed_in("viewer", "vera")

    def queries(waiting: int) -> tuple[int, int]:
        for _ in range(waiting):
            waiting_run(owner, pool="a100", gpus=1)
        ids = ",".join(str(pk) for pk in Run.objects.values_list("pk", flat=True))
        with CaptureQueriesContext(connection) as page:
            assert client.get("/?page_size=200").status_code == 200
        with CaptureQueriesContext(connection) as poll:
            assert client.get(f"/api/v1/runs/states/?ids={ids}").status_code == 200
        return len(page), len(poll)

    few = queries(5)
    assert queries(60) == few
