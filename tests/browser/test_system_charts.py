"""The run page's System section in a real Chromium: the worker's `system/*` series are charted
after the training charts, one chart per measure, every GPU of the run in one."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from runs.ingest import series_ids, write_metric_points
from tests.browser.conftest import Session
from tests.browser.test_dashboard_flows import TERMINAL, launch
from tests.conftest import wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_system_series_are_charted_in_their_own_section_after_the_training_charts(session: Session) -> None:
    run = launch(session.api, "system charts", "webdemo", lines=30)
    wait_for_status(session.api, run["id"], TERMINAL, timeout=60)
    # What a supervisor samples on a host with two GPUs (this one has none): through the same
    # write path as its batches.
    keys = ["system/cpu_percent", "system/rss_mib", "system/gpu0/util_percent", "system/gpu1/util_percent"]
    ids = series_ids(run["id"], keys, {})
    now = timezone.now()
    rows = [
        (ids[key], second * 5, 10.0 + second + i, now) for i, key in enumerate(keys) for second in range(6)
    ]
    write_metric_points(rows, may_repeat=False)

    page = session.page
    page.goto(f"/runs/{run['id']}/")
    section = page.locator("#system-metrics")
    expect(section).to_be_visible()
    expect(section.locator(".chart-card")).to_have_count(3)
    groups = section.locator(".chart-card").evaluate_all("cards => cards.map((card) => card.dataset.group)")
    assert groups == ["system/cpu_percent", "system/gpu*/util_percent", "system/rss_mib"]
    gpus = section.locator(".chart-card", has_text="system/gpu*/util_percent")
    expect(gpus.locator(".chart-note")).to_contain_text("system/gpu0/util_percent")
    expect(gpus.locator(".chart-note")).to_contain_text("system/gpu1/util_percent")
    training = page.locator("#charts .chart-card").evaluate_all(
        "cards => cards.map((card) => card.dataset.group)"
    )
    assert "train/*" in training and not any(group.startswith("system/") for group in training)
    # The System section follows the training charts on the page.
    assert page.evaluate(
        "document.getElementById('charts').compareDocumentPosition(document.getElementById('system-metrics'))"
        " & Node.DOCUMENT_POSITION_FOLLOWING"
    )
    session.shoot("run-system-charts")


def test_a_run_without_system_series_shows_no_system_section(session: Session) -> None:
    run = launch(session.api, "no system", "webdemo", lines=10)
    wait_for_status(session.api, run["id"], TERMINAL, timeout=60)
    page = session.page
    page.goto(f"/runs/{run['id']}/")
    expect(page.locator("#charts .chart-card").first).to_be_visible()
    expect(page.locator("#system-metrics")).to_be_hidden()
