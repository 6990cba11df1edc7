"""axe-core (from npm, the devDependency) audits each page in Chromium: no serious or critical
violation (labels, names, contrast, landmarks, ARIA), in light and dark."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.browser.conftest import DESKTOP, PHONE, Session, sign_in
from tests.conftest import ROOT, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def audit(page: Page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> {[n['target'] for n in v['nodes'][:3]]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def finished_run(api: httpx.Client, name: str, lines: int) -> int:
    run = api.post(
        "/api/v1/runs/", json={"name": name, "program": "webdemo", "params": {"lines": lines}}
    ).json()
    wait_for_status(api, run["id"], TERMINAL, timeout=60)
    return int(run["id"])


def test_every_page_passes_an_axe_audit_in_light_and_dark(browser: Browser, session: Session) -> None:
    if not AXE.exists():
        pytest.fail("node_modules/axe-core is missing: run ./dev setup")
    first = finished_run(session.api, "audited", 30)
    second = finished_run(session.api, "audited too", 20)
    problems: dict[str, list[str]] = {}
    for scheme in ("light", "dark"):
        # The CSP forbids injecting axe's script; these contexts only audit (the CSP has its tests).
        context = browser.new_context(
            base_url=session.base_url, viewport=DESKTOP, color_scheme=scheme, bypass_csp=True
        )
        page = context.new_page()
        page.goto("/login/")
        problems[f"{scheme} /login/"] = audit(page)
        sign_in(page, session.user.username)
        for url in ["/", f"/runs/{first}/", f"/compare/?run={first}&run={second}", "/runs/new/"]:
            page.goto(url)
            page.wait_for_load_state("networkidle")
            problems[f"{scheme} {url}"] = audit(page)
        page.fill("#id_name", "")
        page.fill("#param-steps", "0")
        page.click("#launch-button")
        problems[f"{scheme} /runs/new/ with errors"] = audit(page)
        page.set_viewport_size(PHONE)
        page.goto(f"/runs/{first}/")
        page.wait_for_load_state("networkidle")
        problems[f"{scheme} run page at 390 px"] = audit(page)
        context.close()
    assert {url: found for url, found in problems.items() if found} == {}


def test_identity_and_admin_pages_pass_an_axe_audit_in_light_and_dark(browser: Browser, stack: Any) -> None:
    from tests.conftest import make_user
    from vault.services import do_create_secret

    admin = make_user("ada", "admin")
    do_create_secret(admin, name="AXE_TOKEN", value="axe-secret-value-1")
    problems: dict[str, list[str]] = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(
            base_url=stack.base_url, viewport=DESKTOP, color_scheme=scheme, bypass_csp=True
        )
        page = context.new_page()
        sign_in(page, admin.username)
        urls = ["/account/tokens/", "/users/", f"/users/{admin.pk}/", "/secrets/", "/secrets/new/"]
        urls += ["/secrets/AXE_TOKEN/", "/audit/", "/audit/verify/"]
        urls += ["/programs/", "/programs/new/", "/programs/scripted/edit/"]
        for url in urls:
            page.goto(url)
            problems[f"{scheme} {url}"] = audit(page)
        page.goto("/users/")
        page.fill("#id_username", "x")
        page.click("#create-user")  # no password: the form comes back with its errors
        problems[f"{scheme} /users/ with errors"] = audit(page)
        page.set_viewport_size(PHONE)
        page.goto("/account/tokens/")
        problems[f"{scheme} /account/tokens/ at 390 px"] = audit(page)
        context.close()
    assert {url: found for url, found in problems.items() if found} == {}
