"""Browser fixtures: one Debian Chromium for the session (Playwright drives it; no downloaded
browser), a signed-in page per test against the real stack, and screenshots at desktop and
phone widths under test-output/screenshots/ (CI keeps test-output/)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, sync_playwright

from tests.conftest import PASSWORD, ROOT, Stack

SCREENSHOTS = ROOT / "test-output" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str:
    configured = os.environ.get("CONTROLPLANE_TEST_BROWSER")
    for candidate in ([configured] if configured else []) + list(CANDIDATES):
        if candidate and (Path(candidate).exists() or shutil.which(candidate)):
            return candidate
    pytest.fail(
        "No Chromium found: install it (Debian: apt-get install chromium) or set CONTROLPLANE_TEST_BROWSER"
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not (ROOT / "static" / "vendor" / "uplot" / "uPlot.esm.js").exists():
        pytest.fail("static/vendor/ is empty: run ./dev setup (npm ci and the copy into static/vendor/)")
    # Playwright's sync API keeps an event loop running in this thread for as long as the browser
    # lives; Django would then refuse the fixtures' ORM calls, which are plain sync code here.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@dataclass
class PageProblems:
    """Console errors and uncaught exceptions; a CSP violation shows up as a console error."""

    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def unexpected(self) -> list[str]:
        return [error for error in self.errors if not any(allowed in error for allowed in self.allowed)]


@dataclass
class Session:
    page: Page
    problems: PageProblems
    user: User
    token: str
    api: httpx.Client
    base_url: str

    def shoot(self, name: str) -> None:
        shoot(self.page, name)


def shoot(page: Page, name: str) -> None:
    """Screenshots of the page as it is now, at 1280 and at 390 pixels wide."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}-desktop.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(250)  # charts resize on the next frame
    page.screenshot(path=SCREENSHOTS / f"{name}-phone.png", full_page=True)
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(100)


def sign_in(page: Page, username: str) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")


@pytest.fixture
def session(
    browser: Browser, stack: Stack, live_owner: tuple[User, str], live_api: httpx.Client
) -> Iterator[Session]:
    user, token = live_owner
    context = browser.new_context(base_url=stack.base_url, viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems = PageProblems()
    page.on("console", problems.on_console)
    page.on("pageerror", lambda error: problems.errors.append(f"uncaught: {error}"))
    sign_in(page, user.username)
    yield Session(page=page, problems=problems, user=user, token=token, api=live_api, base_url=stack.base_url)
    context.close()
    assert problems.unexpected() == [], "the page logged errors"


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def all_log_seqs(api: httpx.Client, run_id: int) -> list[int]:
    seqs: list[int] = []
    after = 0
    while True:
        page: dict[str, Any] = api.get(
            f"/api/v1/runs/{run_id}/logs/", params={"after": after, "limit": 5000}
        ).json()
        seqs += [line["seq"] for line in page["results"]]
        if not page["has_more"]:
            return seqs
        after = page["next_after"]
