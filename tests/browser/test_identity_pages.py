"""Identity in the browser: the UI offers only what a role may do; tokens and users pages work."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, Page

from accounts.models import ApiToken, UserRole
from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from tests.browser.conftest import DESKTOP, PageProblems, shoot, sign_in
from tests.conftest import Stack, make_user

pytestmark = pytest.mark.browser
STRONG = "plum-orbit-candle-47-river"


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
def people(stack: Stack, transactional_db: Any) -> dict[str, User]:
    return {
        "viewer": make_user("vera", "viewer"),
        "operator": make_user("olivia", "operator"),
        "other": make_user("tomas", "operator"),
        "admin": make_user("ada", "admin"),
    }


def test_a_viewer_sees_no_launch_cancel_or_admin_controls_and_the_server_refuses_them(
    browser: Browser, stack: Stack, people: dict[str, User]
) -> None:
    run = stack.client(do_issue_token(people["operator"]).plaintext).post(
        "/api/v1/runs/", json={"name": "watched", "program": "scripted"}
    )
    assert run.status_code == 201
    page, problems = open_as(browser, stack, people["viewer"])
    assert page.locator("#my-role").inner_text() == "viewer"
    nav = page.locator("nav.site-nav").inner_text()
    assert "Runs" in nav
    assert "Tokens" in nav
    for hidden in ("New run", "Users", "Secrets", "Audit", "Django admin"):
        assert hidden not in nav, hidden
    page.goto(f"/runs/{run.json()['id']}/")
    assert page.locator("#action-cancel").count() == 0
    assert page.locator("#action-clone").count() == 0
    shoot(page, "identity-viewer-run")
    # The server refuses what the page does not offer.
    refused = page.goto("/runs/new/")
    assert refused is not None and refused.status == 403
    assert "may not launch runs" in page.locator("main").inner_text()
    assert page.goto("/users/") is not None
    assert AuditRecord.objects.filter(action="access.denied", actor="vera").count() >= 2
    assert problems.unexpected() == [] or all("403" in e for e in problems.unexpected())


def test_an_operator_may_cancel_its_own_run_but_not_a_teammates(
    browser: Browser, stack: Stack, people: dict[str, User]
) -> None:
    own = stack.client(do_issue_token(people["operator"]).plaintext)
    theirs = stack.client(do_issue_token(people["other"]).plaintext)
    mine = own.post(
        "/api/v1/runs/",
        json={"name": "mine", "program": "scripted", "params": {"mode": "sleep", "sleep": 30}},
    ).json()
    other = theirs.post(
        "/api/v1/runs/",
        json={"name": "theirs", "program": "scripted", "params": {"mode": "sleep", "sleep": 30}},
    ).json()
    page, _ = open_as(browser, stack, people["operator"])
    page.goto(f"/runs/{mine['id']}/")
    assert page.locator("#action-cancel").count() == 1
    page.goto(f"/runs/{other['id']}/")
    assert page.locator("#action-cancel").count() == 0
    assert page.locator("#action-clone").count() == 1  # operators may launch a copy
    assert own.post(f"/api/v1/runs/{other['id']}/cancel/").status_code == 403
    own.post(f"/api/v1/runs/{mine['id']}/cancel/")
    theirs.post(f"/api/v1/runs/{other['id']}/cancel/")


def test_tokens_page_shows_a_new_token_once_and_revokes_it(
    browser: Browser, stack: Stack, people: dict[str, User]
) -> None:
    page, problems = open_as(browser, stack, people["operator"])
    page.goto("/account/tokens/")
    assert page.locator("#id_scope_admin").count() == 0  # more than an operator may grant
    page.fill("#id_token_name", "notebook")
    page.uncheck("#id_scope_launch")
    page.click("#create-token")
    plaintext = page.locator("#issued-token-value").inner_text()
    assert plaintext.startswith("cp_")
    shoot(page, "identity-token-issued")
    token = ApiToken.objects.get(user=people["operator"], name="notebook")
    assert token.scopes == ["read"]
    client = stack.client(plaintext)
    assert client.get("/api/v1/runs/").status_code == 200
    assert client.post("/api/v1/runs/", json={"name": "x", "program": "scripted"}).status_code == 403
    page.goto("/account/tokens/")
    assert plaintext not in page.content()  # shown once
    page.click(f"tr[data-token-id='{token.pk}'] button:has-text('Revoke')")
    page.wait_for_selector(".flash")
    assert client.get("/api/v1/runs/").status_code == 401
    assert problems.unexpected() == []


def test_an_admin_creates_a_user_changes_its_role_and_deactivates_it(
    browser: Browser, stack: Stack, people: dict[str, User]
) -> None:
    page, problems = open_as(browser, stack, people["admin"])
    page.goto("/users/")
    page.fill("#id_username", "nina")
    page.fill("#id_password", "short")
    page.click("#create-user")
    assert "at least 12 characters" in page.locator("#id_password-error").inner_text()
    page.fill("#id_password", STRONG)
    page.click("#create-user")
    page.wait_for_url("**/users/*/")
    nina = User.objects.get(username="nina")
    assert UserRole.objects.get(user=nina).role == "viewer"
    page.select_option("#id_role", "operator")
    page.click("#change-role")
    page.wait_for_selector(".flash")
    assert page.locator("#subject-role").inner_text() == "operator"
    shoot(page, "identity-user-detail")
    page.click("#deactivate")
    page.wait_for_selector("#activate")
    nina.refresh_from_db()
    assert nina.is_active is False
    actions = list(
        AuditRecord.objects.filter(target_id=str(nina.pk), target_type="user")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["user.create", "user.role_change", "user.deactivate"]
    assert problems.unexpected() == []
