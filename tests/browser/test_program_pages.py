"""The Programs page in a real Chromium: an admin registers a program (a wrong params schema first:
the error shows next to its field), it appears in the launch form with its params, then the
admin retires it and it leaves the launch form. Screenshots: test-output/screenshots/programs-*.png."""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from audit.models import AuditRecord
from runs.models import ProgramDefinition
from tests.browser.conftest import shoot
from tests.browser.test_fleet_pages import open_as
from tests.conftest import Stack, make_user

pytestmark = pytest.mark.browser


def test_an_admin_registers_a_program_that_appears_in_the_launch_form_then_retires_it(
    browser: Browser, stack: Stack, transactional_db: Any
) -> None:
    page, problems = open_as(browser, stack, make_user("ada", "admin"))
    page.goto("/programs/")
    expect(page.locator("#programs-table")).to_contain_text("tinygpt")
    page.get_by_role("link", name="Register a program").click()
    page.fill("#id_name", "browserprog")
    page.fill("#id_description", "Registered from the browser")
    page.fill("#id_command", "{python}\n-m\ntests.fixtures.scripted_program")
    bad = {"type": "object", "properties": {"epochs": {"type": "integer", "default": 0, "minimum": 1}}}
    page.fill("#id_params_schema", json.dumps(bad))
    page.click("#save-button")
    expect(page.locator("#error-summary")).to_contain_text("params_schema.epochs.default")
    expect(page.locator("#id_params_schema-error")).to_contain_text("must be >= 1")
    shoot(page, "programs-error")
    good = {"type": "object", "properties": {"epochs": {"type": "integer", "default": 3, "minimum": 1}}}
    page.fill("#id_params_schema", json.dumps(good))
    page.click("#save-button")
    expect(page.locator("#programs-table")).to_contain_text("browserprog")
    shoot(page, "programs-list")

    page.goto("/runs/new/?program=browserprog")
    expect(page.locator("#id_program option[value=browserprog]")).to_have_count(1)
    expect(page.locator("#launch-form")).to_contain_text("epochs")

    page.goto("/programs/")
    page.locator("#program-browserprog").get_by_role("button", name="Retire").click()
    expect(page.locator("#program-browserprog")).to_contain_text("retired")
    page.goto("/runs/new/")
    expect(page.locator("#id_program option[value=browserprog]")).to_have_count(0)
    assert ProgramDefinition.objects.get(name="browserprog").retired_at is not None
    actions = list(
        AuditRecord.objects.filter(action__startswith="program.")
        .order_by("pk")
        .values_list("action", "outcome")
    )
    assert actions == [
        ("program.create", "denied"),
        ("program.create", "success"),
        ("program.retire", "success"),
    ]
    assert problems.unexpected() == []
