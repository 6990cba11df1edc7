"""The fleet in a real Chromium: the Workers page (two workers in two pools with declared fake
devices, runs holding some of them), an admin's Drain, and the runs list saying why a run waits,
updated live. Screenshots: test-output/screenshots/fleet-*.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, Page, expect

from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from fleet.agent import register
from fleet.inventory import DeviceSpec
from fleet.models import DeviceKind, Worker, WorkerState
from runs.models import Run
from tests.browser.conftest import DESKTOP, PageProblems, shoot, sign_in
from tests.conftest import Stack, make_user, wait_for

pytestmark = pytest.mark.browser
GIB = 2**30


def open_as(browser: Browser, stack: Stack, user: User) -> tuple[Page, PageProblems]:
    context = browser.new_context(base_url=stack.base_url, viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems = PageProblems()
    page.on("console", problems.on_console)
    page.on("pageerror", lambda error: problems.errors.append(f"uncaught: {error}"))
    sign_in(page, user.username)
    return page, problems


@pytest.fixture
def fleet(stack: Stack, transactional_db: Any) -> Iterator[dict[str, Any]]:
    """Two workers as rows (no processes: nothing consumes their queues, so admitted runs stay
    queued holding their devices) in pools of their own, and three runs: two placed, one waiting."""
    a100 = [DeviceSpec(i, DeviceKind.GPU, "NVIDIA A100-SXM4-80GB", 80 * GIB) for i in range(4)]
    h100 = [DeviceSpec(i, DeviceKind.GPU, "NVIDIA H100 80GB HBM3", 80 * GIB) for i in range(2)]
    register("gpu-a-01", "ui-a100", a100, host="rack1-node07")
    register("gpu-h-01", "ui-h100", h100, host="rack2-node03")
    operator = make_user("olivia", "operator")
    api = stack.client(do_issue_token(operator).plaintext)

    def launch(name: str, pool: str, gpus: int) -> int:
        body = {"name": name, "program": "scripted", "resources": {"pool": pool, "gpus": gpus}}
        response = api.post("/api/v1/runs/", json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    runs = {
        "llama": launch("llama-finetune", "ui-a100", 3),
        "bert": launch("bert-sweep-3", "ui-h100", 1),
        "waiting": launch("vit-large", "ui-a100", 2),
    }
    # The web process admits on commit: wait for the two that fit to hold their devices.
    wait_for(
        lambda: (
            api.get(f"/api/v1/runs/{runs['bert']}/").json()["assigned"]
            and api.get(f"/api/v1/runs/{runs['llama']}/").json()["assigned"]
        ),
        30,
        message="the runs that fit to be admitted",
    )
    yield {"runs": runs, "api": api, "operator": operator}
    for run_id in runs.values():
        api.post(f"/api/v1/runs/{run_id}/cancel/")
    api.close()


def test_the_workers_page_shows_devices_by_run_and_an_admin_drains_a_worker(
    browser: Browser, stack: Stack, fleet: dict[str, Any]
) -> None:
    runs = fleet["runs"]
    admin = make_user("ada", "admin")
    page, problems = open_as(browser, stack, admin)
    page.click("nav.site-nav >> text=Workers")
    page.wait_for_url("**/workers/")
    a100 = page.locator('[data-pool="ui-a100"]')
    expect(a100.locator(".pool-summary")).to_contain_text("3 of 4 GPUs in use · 1 run waiting")
    card = a100.locator(".worker-card", has_text="gpu-a-01")
    expect(card.locator(".badge")).to_have_text("Active")
    expect(card).to_contain_text("rack1-node07")
    held = card.locator(f'a.device[data-run-id="{runs["llama"]}"]')
    expect(held).to_have_count(3)
    colour = f"holder-{runs['llama'] % 8}"
    for index in range(3):
        expect(held.nth(index)).to_have_class(re.compile(rf"\b{colour}\b"))
    expect(held.first).to_have_attribute(
        "title", re.compile(r"GPU 0 · NVIDIA A100-SXM4-80GB · 80 GiB · held by #\d+ llama-finetune")
    )
    expect(card.locator(".device.free")).to_have_count(1)
    # Its colour shows the same in the legend, with a link to the run.
    legend = card.locator(".holders li", has_text="llama-finetune")
    expect(legend.locator(".swatch")).to_have_class(re.compile(rf"\b{colour}\b"))
    expect(legend).to_contain_text("3 GPUs · queued")
    shoot(page, "fleet-workers")

    held.first.click()
    page.wait_for_url(f"**/runs/{runs['llama']}/")
    expect(page.locator(".summary")).to_contain_text("gpu-a-01 · GPU 0, 1, 2")

    page.goto("/workers/")
    h100 = page.locator('[data-pool="ui-h100"] .worker-card', has_text="gpu-h-01")
    h100.locator('button[data-action="drain"]').click()
    expect(page.locator(".flash")).to_contain_text("Worker gpu-h-01 is draining")
    expect(h100.locator(".badge")).to_have_text("Draining")
    expect(h100.locator('button[data-action="drain"]')).to_have_count(0)
    assert Worker.objects.get(name="gpu-h-01").state == WorkerState.DRAINING
    assert AuditRecord.objects.filter(action="fleet.drain", actor_id=admin.pk).count() == 1
    shoot(page, "fleet-workers-drained")
    assert problems.unexpected() == []


def test_the_runs_list_says_why_a_run_waits_and_follows_it_live(
    browser: Browser, stack: Stack, fleet: dict[str, Any]
) -> None:
    runs = fleet["runs"]
    page, problems = open_as(browser, stack, make_user("vera", "viewer"))
    page.goto("/")
    waiting = page.locator(f'tr[data-run-id="{runs["waiting"]}"] [data-live="waiting"]')
    expect(waiting).to_be_visible()
    stored = Run.objects.get(pk=runs["waiting"]).waiting_reason
    expect(waiting).to_have_text(stored or "next in ui-a100, waiting for devices to free up")
    # Admitted runs hold their devices: nothing to explain.
    expect(page.locator(f'tr[data-run-id="{runs["llama"]}"] [data-live="waiting"]')).to_be_hidden()
    shoot(page, "fleet-runs-waiting")
    # A new reason reaches the open page through its poll, without a reload: an admin sets
    # olivia's quota to the 4 GPUs she holds, and the pass that change runs gives the reason (a
    # reason written into the row by hand would be rewritten by the next pass of any kind).
    admin = stack.client(do_issue_token(make_user("quinn", "admin")).plaintext)
    answer = admin.patch(f"/api/v1/quotas/{fleet['operator'].pk}/", json={"max_gpus": 4})
    assert answer.status_code == 200, answer.text
    expect(waiting).to_have_text("quota: olivia uses 4 of 4 GPUs", timeout=10_000)
    page.goto(f"/runs/{runs['waiting']}/")
    expect(page.locator("[data-live=waiting]")).to_contain_text("quota: olivia uses 4 of 4 GPUs")
    expect(page.locator("#queue-position")).to_have_text("next in ui-a100")
    # The open run page follows a new reason too (it fetches its summary while the run waits):
    # the pool's only worker drained.
    a100 = Worker.objects.get(name="gpu-a-01")
    assert admin.post(f"/api/v1/workers/{a100.pk}/drain/", json={}).status_code == 202
    admin.close()
    expect(page.locator("[data-live=waiting]")).to_contain_text(
        "every live worker in pool ui-a100 is draining", timeout=12_000
    )
    assert problems.unexpected() == []


def test_the_launch_form_refuses_more_gpus_than_the_pools_largest_worker_has(
    browser: Browser, stack: Stack, fleet: dict[str, Any]
) -> None:
    page, problems = open_as(browser, stack, fleet["operator"])
    page.goto("/runs/new/?program=scripted")
    expect(page.locator("#id_pool-help")).to_contain_text("ui-a100 up to 4 GPUs a run")
    expect(page.locator("#id_priority")).to_have_value("50")
    page.fill("#id_name", "too-big")
    page.fill("#id_pool", "ui-a100")
    page.fill("#id_gpus", "16")
    page.click("#launch-button")
    expect(page.locator("#id_gpus-error")).to_have_text("⚠ needs 16 GPUs; the largest ui-a100 worker has 4")
    expect(page.locator("#error-summary")).to_be_focused()
    expect(page.locator("#id_gpus")).to_have_value("16")
    shoot(page, "fleet-launch-refused")
    assert not Run.objects.filter(name="too-big").exists()
    page.fill("#id_gpus", "1")
    page.fill("#id_priority", "60")
    page.uncheck("#id_preemptible")
    page.click("#launch-button")
    page.wait_for_url(re.compile(r".*/runs/\d+/$"))
    run = Run.objects.get(name="too-big")
    assert (run.resources, run.priority, run.preemptible) == ({"pool": "ui-a100", "gpus": 1}, 60, False)
    fleet["api"].post(f"/api/v1/runs/{run.pk}/cancel/")
    assert problems.unexpected() == []


def test_the_fleet_pages_pass_an_axe_audit_in_light_and_dark(
    browser: Browser, stack: Stack, fleet: dict[str, Any]
) -> None:
    from tests.browser.test_accessibility import AXE, audit

    admin = make_user("ada", "admin")
    problems: dict[str, list[str]] = {}
    for scheme in ("light", "dark"):
        # The CSP forbids injecting axe's script; this context only audits.
        context = browser.new_context(
            base_url=stack.base_url, viewport=DESKTOP, color_scheme=scheme, bypass_csp=True
        )
        page = context.new_page()
        sign_in(page, admin.username)
        assert AXE.exists(), "node_modules/axe-core is missing: run ./dev setup"
        for url in ("/workers/", "/"):
            page.goto(url)
            problems[f"{scheme} {url}"] = audit(page)
        if scheme == "dark":
            page.goto("/workers/")
            shoot(page, "fleet-workers-dark")
        context.close()
    assert {url: found for url, found in problems.items() if found} == {}
