"""The dashboard in a real Chromium against the real stack (uvicorn, Celery worker, Postgres,
Redis). Each flow saves desktop and phone screenshots under test-output/screenshots/."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Session, all_log_seqs, sha256_of, shoot, sign_in
from tests.conftest import TINY_TINYGPT, wait_for, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def launch(api: httpx.Client, name: str, program: str, **params: Any) -> dict[str, Any]:
    response = api.post("/api/v1/runs/", json={"name": name, "program": program, "params": params})
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def page_seqs(page: Page) -> list[int]:
    seqs: list[int] = page.evaluate("window.__cp.logSeqs()")
    return seqs


def test_signing_in_shows_the_runs_list_and_a_missing_run_shows_the_not_found_page(
    session: Session, browser: Any
) -> None:
    page = session.page
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.get_by_text(session.user.username, exact=True)).to_be_visible()
    shoot(page, "runs-list-empty")

    page.goto("/runs/987654/")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    session.problems.allowed.append("404")
    shoot(page, "run-not-found")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login/")
    page.fill("#id_username", session.user.username)
    page.fill("#id_password", "not-the-password")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    shoot(page, "sign-in-error")


def test_an_invalid_field_shows_its_inline_error_then_the_fixed_form_launches_a_run_that_streams_live(
    session: Session,
) -> None:
    page, api = session.page, session.api
    page.goto("/runs/new/")
    page.select_option("#id_program", "webdemo")
    expect(page.locator("fieldset.params legend")).to_contain_text("webdemo")  # the fields were swapped in
    page.fill("#id_name", "live stream")
    page.fill("#param-lines", "-5")
    page.fill("#param-sleep", "lots")
    page.click("#launch-button")

    expect(page.locator("#param-lines-error")).to_have_text(re.compile("must be >= 0"))
    expect(page.locator("#param-sleep-error")).to_have_text(re.compile("must be a number"))
    expect(page.locator("#param-lines")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error-summary")).to_be_focused()
    assert api.get("/api/v1/runs/").json()["results"] == [], "an invalid form launched a run"
    shoot(page, "launch-invalid")

    page.fill("#param-lines", "150")
    page.fill("#param-sleep", "6")
    page.click("#launch-button")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    page.evaluate("window.__sameDocument = true")

    # Lines and points arrive over the websocket while the page stays the same document.
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
    wait_for(lambda: len(page_seqs(page)) >= 40, 30, message="live log lines")
    expect(page.locator(".chart-card").first).to_be_visible()
    wait_for(
        lambda: len(page.evaluate("window.__cp.metricSteps('train/loss')")) >= 20, 30, message="live points"
    )
    expect(page.locator("#log-rows .log-row").first).to_be_visible()
    shoot(page, "run-live")

    wait_for_status(api, run_id, TERMINAL, timeout=60)
    expect(page.locator('[data-fragment="summary"] [data-live="status"]')).to_have_text("Succeeded")
    assert page.evaluate("window.__sameDocument") is True
    api_seqs = all_log_seqs(api, run_id)
    wait_for(lambda: page_seqs(page) == api_seqs, 15, message="the page to hold every line")
    points = api.get(f"/api/v1/runs/{run_id}/metrics/", params={"key": "train/loss"}).json()["points"]
    wait_for(
        lambda: page.evaluate("window.__cp.metricSteps('train/loss')") == [point["step"] for point in points],
        10,
        message="the page's points to be the API's, once each",
    )
    # The log renders a window of rows, not one element per line.
    assert page.locator("#log-rows .log-row").count() < 120
    shoot(page, "run-finished")


def test_a_cut_websocket_reconnects_and_resumes_with_no_gap_and_no_duplicate(session: Session) -> None:
    page, api = session.page, session.api
    run = launch(api, "cut", "webdemo", lines=300, sleep=7)
    page.goto(f"/runs/{run['id']}/")
    wait_for(lambda: len(page_seqs(page)) >= 30, 30, message="the first lines")
    page.evaluate("window.__cp.dropSocket(2000)")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#conn-state")).to_contain_text("reconnecting")
    shoot(page, "socket-reconnecting")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=15_000)

    wait_for_status(api, run["id"], TERMINAL, timeout=60)
    api_seqs = all_log_seqs(api, run["id"])
    wait_for(lambda: page_seqs(page) == api_seqs, 15, message="the page to hold every line once")
    seqs = page_seqs(page)
    assert len(seqs) == len(set(seqs))
    steps = page.evaluate("window.__cp.metricSteps('val/loss')")
    assert steps == sorted(set(steps)) and steps[-1] == 300


def test_a_long_log_opens_at_its_tail_and_pages_back_to_its_first_line(session: Session) -> None:
    from django.utils import timezone

    from runs.models import LogLine, Run

    page = session.page
    total = 30_000
    run = Run.objects.create(
        name="long log",
        owner=session.user,
        program="webdemo",
        queue="training",
        status="succeeded",
        log_seq=total,
    )
    now = timezone.now()
    LogLine.objects.bulk_create(
        (
            LogLine(run=run, seq=seq, ts=now, stream="stdout", line=f"line {seq}")
            for seq in range(1, total + 1)
        ),
        batch_size=5_000,
    )
    page.goto(f"/runs/{run.pk}/")
    wait_for(lambda: page.evaluate("window.__cp.visibleSeqs()[1]") == total, 10, message="the tail on screen")
    assert page_seqs(page)[0] == total - 999  # one page held, not the whole log
    assert page.locator("#log-rows .log-row").count() < 120

    # Scrolling to the top of what is held fetches the page before it, and the view stays put.
    page.evaluate("document.getElementById('log-viewport').scrollTop = 0")  # line 29,001 at the top
    wait_for(lambda: page_seqs(page)[0] == total - 1999, 10, message="the previous page")
    assert abs(page.evaluate("window.__cp.visibleSeqs()[0]") - (total - 999)) <= 1
    expect(page.locator("#log-state")).to_contain_text("Paused")

    # Home goes to the first line, End back to the tail, from the keyboard.
    page.focus("#log-viewport")
    page.keyboard.press("Home")
    wait_for(lambda: page.evaluate("window.__cp.visibleSeqs()[0]") == 1, 10, message="line 1 on screen")
    shoot(page, "log-first-line")
    page.keyboard.press("End")
    wait_for(lambda: page.evaluate("window.__cp.visibleSeqs()[1]") == total, 10, message="the tail again")
    expect(page.locator("#log-state")).to_contain_text("Following")


def test_cancelling_a_run_asks_first_and_then_stops_it(session: Session) -> None:
    page, api = session.page, session.api
    run = launch(api, "to cancel", "scripted", mode="sleep", sleep=120)
    wait_for_status(api, run["id"], {"running"}, timeout=30)
    page.goto(f"/runs/{run['id']}/")
    expect(page.locator('[data-fragment="summary"] [data-live="status"]')).to_have_text("Running")

    page.click("#action-cancel")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    shoot(page, "cancel-confirm")
    page.click("#confirm-dismiss")
    expect(dialog).to_be_hidden()
    assert api.get(f"/api/v1/runs/{run['id']}/").json()["status"] == "running"

    page.click("#action-cancel")
    page.click("#confirm-ok")
    expect(dialog).to_be_hidden()
    expect(page.locator('[data-fragment="summary"] [data-live="status"]')).to_have_text(
        "Cancelled", timeout=20_000
    )
    assert api.get(f"/api/v1/runs/{run['id']}/").json()["status"] == "cancelled"
    expect(page.locator("#action-retry")).to_be_visible()
    shoot(page, "run-cancelled")


def test_the_runs_list_updates_status_and_progress_without_a_reload(session: Session) -> None:
    page, api = session.page, session.api
    run = launch(api, "watched from the list", "webdemo", lines=40, sleep=3)
    page.goto("/")
    page.evaluate("window.__sameDocument = true")
    row = page.locator(f"tr[data-run-id='{run['id']}']")
    expect(row.locator('[data-live="status"]')).to_have_text(re.compile("Queued|Running"))
    launch(api, "launched after the page", "webdemo", lines=1)
    expect(page.locator("#new-runs")).to_be_visible(timeout=10_000)
    expect(row.locator('[data-live="status"]')).to_have_text("Succeeded", timeout=30_000)
    expect(row.locator('[data-live="progress-cell"]')).to_contain_text("100%")
    assert page.evaluate("window.__sameDocument") is True
    shoot(page, "runs-list-live")


def test_two_runs_are_compared_with_a_params_diff_and_overlaid_charts(session: Session) -> None:
    page, api = session.page, session.api
    first = launch(api, "compare a", "webdemo", lines=40)
    second = launch(api, "compare b", "webdemo", lines=60)
    for run in (first, second):
        wait_for_status(api, run["id"], TERMINAL, timeout=60)
    page.goto("/")
    expect(page.locator("#compare-button")).to_be_disabled()
    page.check(f"#pick-{first['id']}")
    page.check(f"#pick-{second['id']}")
    expect(page.locator("#compare-button")).to_be_enabled()
    shoot(page, "runs-list")
    page.click("#compare-button")
    page.wait_for_url(re.compile(r"/compare/\?"))

    differing = page.locator("#diff-table tr.differs")
    expect(differing).to_have_count(1)
    expect(differing.locator("th")).to_contain_text("lines")
    expect(differing).to_contain_text("40")
    expect(differing).to_contain_text("60")
    page.check("#only-differences")
    expect(page.locator("#diff-table tr.same").first).to_be_hidden()
    card = page.locator(".chart-card", has_text="train/loss")
    expect(card).to_be_visible()
    expect(card.locator(".u-legend .u-series:not(.band-edge)")).to_have_count(3)  # x + two runs
    shoot(page, "compare")


def test_the_model_downloads_with_its_sha256_and_its_header_previews(session: Session) -> None:
    page, api = session.page, session.api
    run = launch(api, "tiny model", "tinygpt", **TINY_TINYGPT)
    assert wait_for_status(api, run["id"], TERMINAL, timeout=120)["status"] == "succeeded"
    artifact = api.get(f"/api/v1/runs/{run['id']}/artifacts/").json()[0]
    page.goto(f"/runs/{run['id']}/")
    page.click("#artifacts summary")
    preview = page.locator("#artifacts .preview-body")
    expect(preview).to_contain_text("Parameters")
    expect(preview).to_contain_text("final_val_loss")
    expect(preview).to_contain_text("dataset_sha256")
    expect(preview.locator("table").last).to_contain_text("F32")
    page.locator("#artifacts").scroll_into_view_if_needed()
    shoot(page, "artifact-preview")

    with page.expect_download() as download_info:
        page.click(f"#artifacts a[data-sha256='{artifact['sha256']}']")
    download = download_info.value
    assert download.suggested_filename == "model.safetensors"
    assert sha256_of(download.path()) == artifact["sha256"]
    # The same URL serves ranges (a browser resuming a download): the header's length prefix.
    ranged = api.get(artifact["download_url"], headers={"Range": "bytes=0-7"})
    assert ranged.status_code == 206 and ranged.content == download.path().read_bytes()[:8]


def test_a_run_is_launched_with_the_keyboard_alone(session: Session) -> None:
    page, api = session.page, session.api
    page.goto("/runs/new/")
    page.locator("body").focus()

    def tab_to(element_id: str, limit: int = 40) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement && document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    tab_to("id_program")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused control shows no focus ring"
    page.keyboard.type("webdemo")  # a focused <select> picks the option typed
    expect(page.locator("fieldset.params legend")).to_contain_text("webdemo")
    tab_to("id_name")
    page.keyboard.type("typed, not clicked")
    tab_to("param-lines")
    page.keyboard.press("Control+A")
    page.keyboard.type("12")
    shoot(page, "launch-keyboard")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run = api.get("/api/v1/runs/").json()["results"][0]
    assert (run["name"], run["program"], run["params"]["lines"]) == ("typed, not clicked", "webdemo", 12)


def test_hostile_log_lines_are_shown_as_text_and_never_run(session: Session) -> None:
    page, api = session.page, session.api
    run = launch(api, "hostile", "webdemo", mode="hostile", lines=400)
    wait_for_status(api, run["id"], TERMINAL, timeout=60)
    page.goto(f"/runs/{run['id']}/")
    rows = page.locator("#log-rows .log-row")
    expect(rows.filter(has_text="<script>window.__pwned = 1</script>")).to_have_count(1)
    expect(rows.filter(has_text='<img src=x onerror="window.__pwned = 2">')).to_have_count(1)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#log-rows img, #log-rows script").count() == 0
    red = rows.locator(".ansi-fg-1", has_text="red error")
    expect(red).to_have_count(1)
    expect(rows.filter(has_text="progress 100%")).not_to_contain_text("progress 10%")
    expect(rows.filter(has_text="cursor-moves-dropped")).not_to_contain_text("[2K")
    expect(rows.filter(has_text="bad bytes")).to_contain_text("\ufffd")
    expect(rows.locator(".cut")).to_contain_text("more characters")
    expect(rows.filter(has_text="ValueError")).to_have_class(re.compile("stderr"))

    page.fill("#log-filter", "orange")
    expect(rows.filter(has_text="orange-256")).to_have_count(1)
    expect(page.locator("#log-state")).to_contain_text("1 of")
    # The planted spike survives into the chart (the series is raw at this size; the server-side
    # test covers downsampled series).
    values = page.evaluate("window.__cp.metricSteps('train/loss').length")
    assert values == 400
    shoot(page, "hostile-log")


def test_dark_mode_renders_the_run_page(browser: Any, session: Session) -> None:
    run = launch(session.api, "dark", "webdemo", lines=30)
    wait_for_status(session.api, run["id"], TERMINAL, timeout=60)
    context = browser.new_context(
        base_url=session.base_url, viewport={"width": 1280, "height": 900}, color_scheme="dark"
    )
    page = context.new_page()
    sign_in(page, session.user.username)
    page.goto(f"/runs/{run['id']}/")
    expect(page.locator(".chart-card").first).to_be_visible()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"
    shoot(page, "run-dark")
    context.close()
