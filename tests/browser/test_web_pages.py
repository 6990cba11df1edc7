"""The dashboard's pages through Django's test client: security headers, the launch form's
validation, the runs list's filters and cursor paging, the run and compare pages.
(No browser here; the flows in a real Chromium are in test_dashboard_flows.py.)"""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from runs import services
from runs.models import Artifact, Run, RunStatus
from runs.programs import Program
from runs.web import display, launch
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_client(client: Client, owner: User) -> Client:
    client.force_login(owner)
    return client


def make_run(owner: User, **fields: Any) -> Run:
    fields.setdefault("name", "run")
    fields.setdefault("program", "scripted")
    fields.setdefault("queue", "training")
    return Run.objects.create(owner=owner, **fields)


class InlineCode(HTMLParser):
    """Finds what a strict CSP would block: inline scripts, event handlers, style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.problems.append("a <script> without src")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"an inline handler {name}= on <{tag}>")
            if name == "style":
                self.problems.append(f"a style attribute on <{tag}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.problems.append(f"a javascript: URL on <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("an inline script body")


# -- content security policy -----------------------------------------------------------------


def test_every_html_page_carries_the_strict_csp_and_holds_no_inline_code(
    client: Client, owner: User, teammate: User
) -> None:
    run = make_run(owner, program="tinygpt", params={"steps": 5})
    other = make_run(teammate, name="other")
    Artifact.objects.create(
        run=run, attempt=1, name="model.safetensors", kind="model", size=10, sha256="a" * 64, storage_key="x"
    )
    pages = ["/login/"]
    signed_in = [
        "/",
        "/?status=active&sort=name&q=r",
        "/runs/new/",
        f"/runs/new/?clone={run.pk}",
        f"/runs/{run.pk}/",
        f"/runs/{run.pk}/live/",
        f"/compare/?run={run.pk}&run={other.pk}",
        "/compare/",
        "/runs/424242/",
        "/no/such/page/",
    ]
    responses = [client.get(url) for url in pages]
    client.force_login(owner)
    responses += [client.get(url) for url in signed_in]
    responses.append(client.post("/runs/new/", {"program": "tinygpt", "name": "", "params.steps": "0"}))
    for response in responses:
        url = response.request["PATH_INFO"]
        assert response["Content-Type"].startswith("text/html"), url
        policy = response["Content-Security-Policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ):
            assert directive in policy, (url, directive)
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        parser = InlineCode()
        parser.feed(response.content.decode())
        assert parser.problems == [], (url, parser.problems)


def test_the_error_pages_render_without_inline_code(rf: Any) -> None:
    from django.template.loader import render_to_string

    for name in ("errors/400.html", "errors/403.html", "errors/404.html", "errors/500.html", "403_csrf.html"):
        parser = InlineCode()
        parser.feed(render_to_string(name, {}))
        assert parser.problems == [], name


def test_a_stale_form_gets_the_friendly_expired_page(owner: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post("/runs/new/", {"program": "tinygpt", "name": "x"})
    assert response.status_code == 403
    assert b"This form has expired" in response.content
    assert not Run.objects.exists()


def test_api_responses_carry_the_csp_too(client: Client, owner: User) -> None:
    client.force_login(owner)
    assert "default-src 'self'" in client.get("/api/v1/runs/")["Content-Security-Policy"]


# -- sign in and errors ---------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client: Client) -> None:
    for url in ("/", "/runs/new/", "/runs/1/", "/compare/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


def test_signing_in_with_the_form_lands_on_the_runs_list(client: Client, owner: User) -> None:
    response = client.post("/login/", {"username": owner.username, "password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == "/"
    assert b"Sign out" in response.content


def test_a_run_that_does_not_exist_shows_the_friendly_not_found_page(browser_client: Client) -> None:
    response = browser_client.get("/runs/999999/")
    assert response.status_code == 404
    assert b"<h1>Not found</h1>" in response.content
    assert b"Back to runs" in response.content


# -- launch form ----------------------------------------------------------------------------


def test_the_launch_form_is_generated_from_the_program_schema(browser_client: Client) -> None:
    html = browser_client.get("/runs/new/?program=tinygpt").content.decode()
    assert 'name="params.steps"' in html and 'value="200"' in html
    assert "Number of optimizer steps to train for." in html  # the description is the help text
    assert "1 to 10,000,000" in html  # bounds
    assert 'id="param-device"' in html and '<option value="cuda"' in html  # enum as a select
    assert "&gt; 0 and ≤ 1.0" in html  # exclusive minimum and maximum of lr
    assert "No secrets are shared with you" in html  # none exist yet: the fieldset is disabled
    assert '<fieldset class="secrets" disabled>' in html


@pytest.mark.parametrize(
    ("field", "typed", "message"),
    [
        ("params.steps", "0", "must be >= 1"),
        ("params.steps", "ten", "must be an integer"),
        ("params.steps", "2.5", "must be an integer"),
        ("params.lr", "0", "must be > 0"),
        ("params.lr", "nan", "must be a finite number"),
        ("params.lr", "fast", "must be a number"),
        ("params.device", "tpu", "must be one of: auto, cpu, cuda"),
        ("name", "", "a non-empty string is required"),
        ("name", "x" * 201, "must be at most 200 characters"),
    ],
)
def test_every_invalid_value_gets_its_inline_message_and_nothing_is_launched(
    browser_client: Client, field: str, typed: str, message: str
) -> None:
    form = {"program": "tinygpt", "name": "ok", field: typed}
    response = browser_client.post("/runs/new/", form)
    assert response.status_code == 200
    html = response.content.decode()
    input_id = "id_name" if field == "name" else f"param-{field.split('.', 1)[1]}"
    assert f'id="{input_id}-error"' in html
    assert message.replace(">", "&gt;") in html
    assert 'aria-invalid="true"' in html
    assert "nothing was launched" in html
    assert not Run.objects.exists()


def test_the_form_and_the_api_give_the_same_messages(browser_client: Client, api: Any) -> None:
    form = browser_client.post("/runs/new/", {"program": "tinygpt", "name": "x", "params.batch_size": "0"})
    body = api.post(
        "/api/v1/runs/", {"name": "x", "program": "tinygpt", "params": {"batch_size": 0}}, format="json"
    )
    assert body.status_code == 400
    assert body.json()["params.batch_size"][0].replace(">", "&gt;") in form.content.decode()


def test_an_unknown_program_is_reported_on_its_field(browser_client: Client) -> None:
    html = browser_client.post("/runs/new/", {"program": "nope", "name": "x"}).content.decode()
    assert 'id="id_program-error"' in html and "unknown program" in html
    assert not Run.objects.exists()


def test_a_valid_form_launches_the_run_and_opens_its_page(browser_client: Client, owner: User) -> None:
    response = browser_client.post(
        "/runs/new/", {"program": "tinygpt", "name": "  from the form ", "params.steps": "7", "params.lr": ""}
    )
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert (run.name, run.owner, run.status) == ("from the form", owner, RunStatus.QUEUED)
    assert run.params["steps"] == 7
    assert run.params["lr"] == 3e-3  # empty means the default


def test_clone_prefills_the_form_from_an_existing_run(browser_client: Client, owner: User) -> None:
    source = make_run(owner, name="baseline", program="tinygpt", params={"steps": 33, "lr": 0.01, "gone": 1})
    html = browser_client.get(f"/runs/new/?clone={source.pk}").content.decode()
    assert 'value="baseline (clone)"' in html
    assert 'name="params.steps" id="param-steps" value="33"' in html
    assert 'value="0.01"' in html
    assert "gone" not in html  # a param the program no longer has is left out
    assert browser_client.get("/runs/new/?clone=424242").status_code == 404


def test_posted_strings_become_the_json_values_they_spell() -> None:
    program = Program(
        name="p",
        command=("x",),
        description="",
        params={
            "n": {"type": "integer", "default": 1},
            "x": {"type": "number", "default": 0.5},
            "flag": {"type": "boolean", "default": True},
            "mode": {"type": "string", "default": "a", "enum": ["a", "b"]},
            "tag": {"type": "string", "default": ""},
        },
    )
    from django.http import QueryDict

    data = QueryDict("params.n=+12+&params.x=1e-3&params.mode=b&params.tag=%20keep%20")
    params, shown = launch.posted_params(program, data)
    assert params == {"n": 12, "x": 0.001, "flag": False, "mode": "b", "tag": " keep "}
    assert shown["n"] == "12"
    # Unparsable text goes to check_launch as is (it names the problem); empty fields are left out.
    params, _ = launch.posted_params(program, QueryDict("params.n=abc&params.x=&params.flag=true"))
    assert params == {"n": "abc", "flag": True}


# -- runs list ------------------------------------------------------------------------------


@pytest.fixture
def many_runs(owner: User, teammate: User) -> list[Run]:
    now = timezone.now()
    runs = []
    statuses = [
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.RUNNING,
        RunStatus.QUEUED,
        RunStatus.CANCELLED,
    ]
    for i in range(63):
        status = statuses[i % len(statuses)]
        started = now - timedelta(minutes=100 - i) if status != RunStatus.QUEUED else None
        finished = (
            started + timedelta(seconds=(i * 37) % 50)
            if started and status not in (RunStatus.RUNNING,)
            else None
        )
        runs.append(
            Run(
                name=f"run {(i * 7) % 20:02d}",
                owner=owner if i % 3 else teammate,
                program="tinygpt" if i % 4 else "scripted",
                queue="training",
                status=status,
                started_at=started,
                finished_at=finished,
                progress_step=i if status == RunStatus.RUNNING else None,
                progress_total=100 if status == RunStatus.RUNNING else None,
            )
        )
    return Run.objects.bulk_create(runs)


def listed_ids(client: Client, query: str) -> tuple[list[int], str | None, str | None]:
    response = client.get("/" + query)
    assert response.status_code == 200
    rows = response.context["rows"]
    return [row.run.pk for row in rows], response.context["next_url"], response.context["previous_url"]


def expected_order(runs: list[Run], sort: str) -> list[int]:
    def duration(run: Run) -> float | None:
        return (
            (run.finished_at - run.started_at).total_seconds() if run.finished_at and run.started_at else None
        )

    if sort == "-created":
        return sorted((r.pk for r in runs), reverse=True)
    if sort == "created":
        return sorted(r.pk for r in runs)
    if sort == "name":
        return [r.pk for r in sorted(runs, key=lambda r: (r.name, r.pk))]
    if sort == "status":
        return [r.pk for r in sorted(runs, key=lambda r: (r.status, -r.pk))]
    with_duration = sorted((r for r in runs if duration(r) is not None), key=lambda r: (-duration(r), -r.pk))  # type: ignore[operator]
    without = sorted((r for r in runs if duration(r) is None), key=lambda r: -r.pk)
    return [r.pk for r in with_duration + without]


@pytest.mark.parametrize("sort", ["-created", "created", "name", "status", "-duration"])
def test_cursor_pages_walk_every_sort_forward_and_back_without_overlap(
    browser_client: Client, many_runs: list[Run], sort: str
) -> None:
    expected = expected_order(many_runs, sort)
    seen: list[int] = []
    pages: list[list[int]] = []
    query: str | None = f"?sort={sort}&page_size=25"
    while query:
        ids, next_url, _ = listed_ids(browser_client, query)
        pages.append(ids)
        seen += ids
        query = next_url
    assert seen == expected
    # And back again from the last page with the "previous" links.
    _, _, previous = listed_ids(
        browser_client, f"?sort={sort}&page_size=25&cursor=" + _cursor_of_last_page(browser_client, sort)
    )
    back: list[list[int]] = [pages[-1]]
    while previous:
        ids, _, previous = listed_ids(browser_client, previous)
        back.insert(0, ids)
    assert back == pages


def _cursor_of_last_page(client: Client, sort: str) -> str:
    query: str | None = f"?sort={sort}&page_size=25"
    last = ""
    while query:
        _, next_url, _ = listed_ids(client, query)
        if next_url:
            last = next_url.split("cursor=", 1)[1].split("&", 1)[0]
        query = next_url
    return last


def test_filters_narrow_the_list(browser_client: Client, many_runs: list[Run], teammate: User) -> None:
    ids, _, _ = listed_ids(browser_client, "?status=running&page_size=200")
    assert ids and all(Run.objects.get(pk=i).status == "running" for i in ids)
    ids, _, _ = listed_ids(browser_client, "?status=active&page_size=200")
    assert {Run.objects.get(pk=i).status for i in ids} == {"running", "queued"}
    ids, _, _ = listed_ids(browser_client, f"?owner={teammate.username}&program=scripted&page_size=200")
    assert ids and all(
        (r.owner_id, r.program) == (teammate.pk, "scripted") for r in Run.objects.filter(pk__in=ids)
    )
    ids, _, _ = listed_ids(browser_client, "?q=RUN 07&page_size=200")
    assert ids and all(Run.objects.get(pk=i).name == "run 07" for i in ids)
    ids, _, _ = listed_ids(browser_client, "?status=bogus&sort=bogus&page_size=7&cursor=%%%")
    assert len(ids) == 50  # unknown values are ignored, not errors


def test_the_list_costs_the_same_queries_whatever_the_page_size(
    browser_client: Client, many_runs: list[Run], django_assert_max_num_queries: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    for size in (25, 200):
        with CaptureQueriesContext(connection) as queries:
            browser_client.get(f"/?page_size={size}&sort=-duration")
        counts.append(len(queries))
    # 6: the program filter's names come from the catalog (runs.programs.all_programs, one query).
    assert counts[0] == counts[1] <= 6


def test_the_list_shows_status_progress_and_duration(browser_client: Client, owner: User) -> None:
    now = timezone.now()
    make_run(
        owner,
        name="halfway",
        status=RunStatus.RUNNING,
        started_at=now - timedelta(minutes=3),
        progress_step=50,
        progress_total=100,
    )
    html = browser_client.get("/").content.decode()
    assert "badge status-running" in html and "halfway" in html
    assert 'value="50"' in html and "50%" in html
    assert "3m 0" in html


# -- run and compare pages ------------------------------------------------------------------


def test_the_run_page_shows_timeline_params_and_artifacts(browser_client: Client, owner: User) -> None:
    now = timezone.now()
    run = make_run(
        owner,
        program="tinygpt",
        params={"steps": 12, "lr": 0.003},
        status=RunStatus.FAILED,
        attempt=1,
        started_at=now - timedelta(seconds=30),
        finished_at=now,
        enqueued_at=now - timedelta(seconds=31),
        error_kind="program",
        error_code="exit_1",
        error_message="<b>boom</b>",
    )
    Artifact.objects.create(
        run=run,
        attempt=1,
        name="model.safetensors",
        kind="model",
        size=2_500_000,
        sha256="f" * 64,
        storage_key="k",
    )
    html = browser_client.get(f"/runs/{run.pk}/").content.decode()
    assert "tl-failed" in html and "Failed" in html
    assert "&lt;b&gt;boom&lt;/b&gt;" in html  # escaped
    assert "2.5 MB" in html and "f" * 64 in html
    assert f"/api/v1/artifacts/{Artifact.objects.get().pk}/preview/" in html
    assert "changed" in html  # steps differs from the default
    assert 'data-action="retry"' in html and 'data-action="cancel"' not in html


def test_compare_diffs_params_and_reports_runs_it_cannot_show(browser_client: Client, owner: User) -> None:
    a = make_run(owner, name="a", program="tinygpt", params={"steps": 10, "lr": 0.1})
    b = make_run(owner, name="b", program="tinygpt", params={"steps": 10, "lr": 0.2, "seed": 1})
    response = browser_client.get(f"/compare/?run={a.pk}&runs={b.pk},424242")
    diff = {row.name: row for row in response.context["diff"]}
    assert not diff["steps"].differs and diff["lr"].differs and diff["seed"].differs
    assert diff["seed"].values == [None, "1"]
    assert "No such run: 424242." in response.content.decode()
    ids = "&".join(f"run={make_run(owner).pk}" for _ in range(11))
    assert "at most 10" in browser_client.get(f"/compare/?{ids}").content.decode()
    assert "Pick at least two" in browser_client.get(f"/compare/?run={a.pk}").content.decode()


# -- display helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "—"), (0, "0s"), (59.9, "59s"), (61, "1m 01s"), (3_600 * 5 + 120, "5h 02m"), (90_000, "1d 01h")],
)
def test_durations_read_at_a_glance(seconds: float | None, text: str) -> None:
    assert display.format_duration(seconds) == text


def test_the_timeline_of_a_cancelled_running_run(owner: User) -> None:
    now = timezone.now()
    run = make_run(
        owner,
        status=RunStatus.CANCELLED,
        started_at=now,
        enqueued_at=now,
        cancel_requested_at=now,
        finished_at=now,
    )
    assert [(s.label, s.state) for s in display.timeline(run)] == [
        ("Queued", "done"),
        ("Dispatched", "done"),
        ("Running", "done"),
        ("Cancelling", "done"),
        ("Cancelled", "stopped"),
    ]


def test_a_run_cancelled_while_queued_never_ran_on_its_timeline(owner: User) -> None:
    now = timezone.now()
    run = make_run(owner, status=RunStatus.CANCELLED, cancel_requested_at=now, finished_at=now)
    assert [(s.label, s.state) for s in display.timeline(run)] == [
        ("Queued", "done"),
        ("Dispatched", "skipped"),
        ("Running", "skipped"),
        ("Cancelled", "stopped"),
    ]


def test_a_running_run_whose_dispatch_time_is_unknown_was_still_dispatched(owner: User) -> None:
    run = make_run(owner, status=RunStatus.RUNNING, started_at=timezone.now())
    assert [(s.label, s.state) for s in display.timeline(run)] == [
        ("Queued", "done"),
        ("Dispatched", "done"),
        ("Running", "current"),
        ("Finished", "pending"),
    ]


def test_a_retried_run_waits_again_on_its_timeline(owner: User) -> None:
    now = timezone.now()
    run = make_run(owner, status=RunStatus.QUEUED, attempt=1, started_at=now)
    states = [(s.label, s.state, s.at) for s in display.timeline(run)]
    assert states[0][:2] == ("Queued", "current")
    assert states[2] == ("Running", "pending", None)


def test_the_launch_service_is_what_the_form_calls() -> None:
    # A guard for the contract the form relies on: errors keyed by field, params by `params.<name>`.
    with pytest.raises(services.LaunchError) as failure:
        services.check_launch(name="", program="tinygpt", params={"steps": 0})
    assert set(failure.value.errors) == {"name", "params.steps"}


def test_each_page_preloads_the_whole_module_graph_of_its_script(browser_client: Client, owner: User) -> None:
    import re

    from runs.web.assets import static_root

    run = make_run(owner)
    for url, entry in [
        ("/", "js/pages/runs-list.js"),
        ("/runs/new/", "js/pages/launch.js"),
        (f"/runs/{run.pk}/", "js/pages/run.js"),
        (f"/compare/?run={run.pk}&run={make_run(owner).pk}", "js/pages/compare.js"),
    ]:
        html = browser_client.get(url).content.decode()
        assert f'<script type="module" src="/static/{entry}">' in html
        preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/([^"]+)">', html))
        imported = set(re.findall(r'from "(?:\.\.?/)+([^"]+)"', (static_root() / entry).read_text()))
        assert imported
        assert entry in preloaded
        assert all(any(path.endswith(name) for path in preloaded) for name in imported), (
            url,
            imported - preloaded,
        )
    assert "vendor/uplot/uPlot.esm.js" in re.findall(
        r'modulepreload" href="/static/([^"]+)"', browser_client.get(f"/runs/{run.pk}/").content.decode()
    )


def test_the_launch_form_offers_only_the_secrets_shared_with_the_user(
    browser_client: Client, owner: User, teammate: User
) -> None:
    from vault.services import do_create_secret

    do_create_secret(None, name="SHARED_TOKEN", value="shared-value-0123", allowed_users=[owner.username])
    do_create_secret(None, name="TEAM_TOKEN", value="team-value-0123", allowed_roles=["operator"])
    do_create_secret(None, name="OTHER_TOKEN", value="other-value-0123", allowed_users=[teammate.username])
    html = browser_client.get("/runs/new/?program=scripted").content.decode()
    assert '<option value="SHARED_TOKEN"' in html and '<option value="TEAM_TOKEN"' in html
    assert "OTHER_TOKEN" not in html
    launched = browser_client.post(
        "/runs/new/", {"program": "scripted", "name": "with-secret", "secrets": ["SHARED_TOKEN"]}
    )
    assert launched.status_code == 302
    assert Run.objects.get(name="with-secret").secrets == ["SHARED_TOKEN"]
    # A name typed in by hand is checked like the API does it: a field error, nothing launched.
    refused = browser_client.post(
        "/runs/new/", {"program": "scripted", "name": "sneaky", "secrets": ["OTHER_TOKEN"]}
    )
    assert refused.status_code == 200
    assert "not allowed to you" in refused.content.decode()
    assert not Run.objects.filter(name="sneaky").exists()
