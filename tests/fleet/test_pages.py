"""The fleet's pages through Django's test client: the Workers page and its Drain button, the
waiting reason in the runs list and its live poll, the launch form's resources fields."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditRecord
from fleet.models import Worker, WorkerState
from fleet.scheduler import schedule_pass
from tests.conftest import make_user
from tests.fleet.helpers import cpu_worker, gpu_worker, waiting_run

pytestmark = pytest.mark.django_db


def signed_in(role: str, name: str) -> tuple[Client, User]:
    user = make_user(name, role)
    client = Client()
    client.force_login(user)
    return client, user


def cells(html: str) -> list[str]:
    """The device cells of the page, each as its opening tag."""
    return re.findall(r'<(?:a|span) class="device [^>]*>', html)


# -- the Workers page ----------------------------------------------------------------------------


def test_every_signed_in_role_sees_the_workers_page_in_the_nav() -> None:
    gpu_worker("gpu-1", 2)
    for role in ("viewer", "operator", "admin"):
        client, _ = signed_in(role, f"{role}-person")
        page = client.get("/workers/")
        assert page.status_code == 200, role
        html = page.content.decode()
        assert '<a href="/workers/" aria-current="page">Workers</a>' in html, role
        assert "gpu-1" in html
        assert '<a href="/workers/">Workers</a>' in client.get("/").content.decode(), role


def test_a_signed_out_visitor_is_sent_to_sign_in() -> None:
    response = Client().get("/workers/")
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=/workers/")


def test_pools_workers_states_and_devices_coloured_by_the_run_holding_them() -> None:
    owner = make_user("olivia", "operator")
    gpu_worker("gpu-1", 4, pool="a100")
    gpu_worker("gpu-2", 2, pool="h100")
    cpu_worker("cpu-1", slots=2, pool="cpu")
    Worker.objects.filter(name="gpu-2").update(state=WorkerState.DRAINING)
    holding = waiting_run(owner, pool="a100", gpus=2, name="big-model")
    waiting_run(owner, pool="a100", gpus=4, name="bigger-model")
    assert schedule_pass().placed == [holding.pk]
    client, _ = signed_in("viewer", "vera")
    html = client.get("/workers/").content.decode()

    # Pools in order of name, each with its summary.
    assert [m for m in re.findall(r'data-pool="([^"]+)"', html)] == ["a100", "cpu", "h100"]
    assert "1 worker · 2 of 4 GPUs in use · 1 run waiting" in html
    assert "1 worker · 1 draining · 0 of 2 GPUs in use · 0 runs waiting" in html
    assert "0 of 2 CPU slots in use" in html
    # States as badges.
    assert re.search(r'data-state="draining"[^>]*>\s*<header[^>]*>\s*<h3[^>]*>gpu-2<', html)
    assert html.count('data-state="active"') == 2

    # The run's two devices carry its colour class and link to it; the other two are free.
    colour = f"holder-{holding.pk % 8}"
    held = [cell for cell in cells(html) if f'href="/runs/{holding.pk}/"' in cell]
    assert len(held) == 2 and all(colour in cell for cell in held)
    assert f'aria-label="GPU 0 · Fake A100 · 80 GiB · held by #{holding.pk} big-model"' in html
    free = [cell for cell in cells(html) if "device free" in cell]
    assert len(free) == 2 + 2 + 2  # two GPUs of gpu-1, both of gpu-2, two CPU slots
    assert 'aria-label="CPU slot 1 · free"' in html
    # The legend names it once, with what it holds.
    assert html.count(f'class="holder-link">#{holding.pk} big-model</a>') == 1
    assert "2 GPUs · queued" in html
    assert "bigger-model" not in html  # waiting runs hold nothing


def test_the_colour_of_a_run_is_the_same_on_every_worker_and_every_load() -> None:
    owner = make_user("olivia", "operator")
    gpu_worker("gpu-1", 2, pool="a100")
    gpu_worker("gpu-2", 2, pool="a100")
    runs = [waiting_run(owner, pool="a100", gpus=2, name=f"r{i}") for i in range(2)]
    schedule_pass()
    client, _ = signed_in("viewer", "vera")
    first = client.get("/workers/").content.decode()
    assert cells(first) == cells(client.get("/workers/").content.decode())
    for run in runs:
        held = [cell for cell in cells(first) if f'href="/runs/{run.pk}/"' in cell]
        assert len(held) == 2 and {re.search(r"holder-\d", c).group(0) for c in held} == {  # type: ignore[union-attr]
            f"holder-{run.pk % 8}"
        }


def test_a_device_held_by_a_run_the_viewer_may_not_read_names_no_run(monkeypatch: Any) -> None:
    from accounts import policy
    from accounts.roles import Role

    owner = make_user("olivia", "operator")
    gpu_worker("gpu-1", 2, pool="a100")
    secret = waiting_run(owner, pool="a100", gpus=1, name="secret-project")
    schedule_pass()
    # Today every role reads every run; the page must follow the rule if it narrows to own runs.
    narrowed = policy.Rule(Role.VIEWER, "read", others=policy.ADMINS, verb="read runs")
    monkeypatch.setitem(policy.RULES, policy.Action.RUN_READ, narrowed)
    client, _ = signed_in("viewer", "vera")
    html = client.get("/workers/").content.decode()
    assert "secret-project" not in html and f"/runs/{secret.pk}/" not in html
    assert "held by a run you may not see" in html
    assert "device held holder-hidden" in html
    owners_view = Client()
    owners_view.force_login(owner)
    assert "secret-project" in owners_view.get("/workers/").content.decode()


def test_the_workers_page_carries_the_strict_csp_and_holds_no_inline_code() -> None:
    from tests.browser.test_web_pages import InlineCode

    owner = make_user("olivia", "operator")
    gpu_worker("gpu-1", 2, pool="a100")
    waiting_run(owner, pool="a100", gpus=1)
    schedule_pass()
    client, _ = signed_in("admin", "ada")
    response = client.get("/workers/")
    assert "style-src 'self'" in response["Content-Security-Policy"]
    assert "unsafe-inline" not in response["Content-Security-Policy"]
    parser = InlineCode()
    parser.feed(response.content.decode())
    assert parser.problems == []


def test_an_empty_fleet_says_how_workers_join() -> None:
    client, _ = signed_in("viewer", "vera")
    html = client.get("/workers/").content.decode()
    assert 'id="no-workers"' in html and "CONTROLPLANE_WORKER_POOL" in html


# -- Drain -----------------------------------------------------------------------------------------


def test_only_admins_see_the_drain_button() -> None:
    gpu_worker("gpu-1", 2)
    for role, sees in (("viewer", False), ("operator", False), ("admin", True)):
        client, _ = signed_in(role, f"{role}-person")
        html = client.get("/workers/").content.decode()
        assert ('data-action="drain"' in html) is sees, role


def test_an_admin_drains_a_worker_and_the_drain_is_audited() -> None:
    worker = gpu_worker("gpu-1", 2)
    client, admin = signed_in("admin", "ada")
    response = client.post(f"/workers/{worker.pk}/drain/", follow=True)
    assert response.redirect_chain == [("/workers/", 302)]
    assert Worker.objects.get(pk=worker.pk).state == WorkerState.DRAINING
    html = response.content.decode()
    assert "Worker gpu-1 is draining" in html
    assert 'data-state="draining"' in html and 'data-action="drain"' not in html
    record = AuditRecord.objects.filter(action="fleet.drain").get()
    assert (record.actor_id, record.target_id, record.details) == (
        admin.pk,
        str(worker.pk),
        {"preempted": []},
    )


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewers_and_operators_may_not_drain(role: str) -> None:
    worker = gpu_worker("gpu-1", 2)
    client, user = signed_in(role, f"{role}-person")
    response = client.post(f"/workers/{worker.pk}/drain/")
    assert response.status_code == 403
    assert Worker.objects.get(pk=worker.pk).state == WorkerState.ACTIVE
    assert not AuditRecord.objects.filter(action="fleet.drain").exists()
    denial = AuditRecord.objects.filter(action="access.denied", actor_id=user.pk).get()
    assert denial.details["action"] == "fleet.manage"


def test_the_drain_form_needs_its_csrf_token() -> None:
    worker = gpu_worker("gpu-1", 2)
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("ada", "admin"))
    assert client.post(f"/workers/{worker.pk}/drain/").status_code == 403
    assert Worker.objects.get(pk=worker.pk).state == WorkerState.ACTIVE


def test_draining_an_unknown_worker_is_a_404_and_a_get_is_refused() -> None:
    worker = gpu_worker("gpu-1", 2)
    client, _ = signed_in("admin", "ada")
    assert client.post("/workers/999999/drain/").status_code == 404
    assert client.get(f"/workers/{worker.pk}/drain/").status_code == 405
