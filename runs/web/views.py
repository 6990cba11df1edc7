"""Dashboard pages. Each view reads through `runs.selectors` (the one visibility rule) and writes
through `runs.services`; live data reaches the page later through the API and the websocket."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from accounts.pages import page_principal, requires
from accounts.policy import Action, can
from ops.inputs import parse_id
from ops.middleware import repeating_since
from runs import launch_hooks, lifecycle, selectors, services
from runs.models import Artifact, Run, RunStatus
from runs.programs import Program, all_programs, get_program
from runs.web import code, display, launch, resources
from runs.web.assets import module_graph
from runs.web.listing import PAGE_SIZES, SORTS, paginate, parse_list_query
from vault.selectors import usable_secret_names

MAX_COMPARE = 10
MAX_OWNER_CHOICES = 500


# -- runs list -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    """A run as a list row shows it, every value ready to print: the list renders up to 200 of
    these, and resolving attributes and filters per cell is most of a Django template's time."""

    run: Run
    id: str  # text already: an int would go through number localization in every cell
    url: str
    name: str
    status: str
    label: str
    program: str
    owner: str
    created_iso: str
    created_text: str
    started_iso: str
    finished_iso: str
    duration: str
    progress: int | None
    waiting: str = ""  # why a queued run waits (fleet admission), "" otherwise


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""


def _row(run: Run, now: datetime, waiting: str = "") -> RunRow:
    return RunRow(
        run=run,
        id=str(run.pk),
        url=reverse("run-detail", args=[run.pk]),
        name=run.name,
        status=run.status,
        label=display.STATUS_LABELS.get(RunStatus(run.status), run.status),
        program=run.program,
        owner=run.owner.username,
        created_iso=_iso(run.created_at),
        created_text=run.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        started_iso=_iso(run.started_at),
        finished_iso=_iso(run.finished_at),
        duration=display.format_duration(display.duration_seconds(run, now)),
        progress=display.progress_percent(run),
        waiting=waiting,
    )


def _with(params: QueryDict, **changes: str | None) -> str:
    """The current query string with some parameters replaced (None removes one)."""
    merged = {key: value for key, value in params.items() if value}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return "?" + urlencode(merged) if merged else "?"


@require_GET
@requires(Action.RUN_READ)
def run_list(request: HttpRequest) -> HttpResponse:
    query = parse_list_query(request.GET)
    runs = selectors.filter_runs(
        selectors.visible_runs(page_principal(request)).select_related("owner"), query.filters
    )
    page = paginate(runs, query)
    now = timezone.now()
    waiting = launch_hooks.waiting_reasons(page.runs)
    owners = list(
        get_user_model()
        .objects.filter(is_active=True)
        .order_by("username")
        .values_list("username", flat=True)[:MAX_OWNER_CHOICES]
    )
    filtered = bool(
        query.filters.statuses or query.filters.owner or query.filters.program or query.filters.text
    )
    return render(
        request,
        "runs/list.html",
        {
            "rows": [_row(run, now, waiting.get(run.pk, "")) for run in page.runs],
            "query": query,
            "statuses": [(status, display.STATUS_LABELS[RunStatus(status)]) for status in RunStatus.values],
            "owners": owners,
            "programs": sorted(all_programs()),
            "sorts": [(key, sort.label) for key, sort in SORTS.items()],
            "sort_label": SORTS[query.sort].label.lower(),
            "page_sizes": PAGE_SIZES,
            "filtered": filtered,
            "first_page": not query.cursor,
            "next_url": _with(request.GET, cursor=page.next_cursor) if page.next_cursor else None,
            "previous_url": _with(request.GET, cursor=page.previous_cursor) if page.previous_cursor else None,
            "preload": module_graph("js/pages/runs-list.js"),
        },
    )


# -- run page ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamRow:
    name: str
    value: str
    default: str | None
    changed: bool


@dataclass(frozen=True)
class ArtifactRow:
    artifact: Artifact
    size: str
    previewable: bool


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _param_rows(run: Run, program: Program | None) -> list[ParamRow]:
    specs = program.params if program is not None else {}
    rows = []
    for name, value in sorted(run.params.items()):
        spec = specs.get(name)
        if spec is None:
            rows.append(ParamRow(name, _json(value), None, False))
            continue
        # Compared as values, not as text: 0.0 is the default 0 (resolving made it a float).
        same = value == spec["default"] and isinstance(value, bool) == isinstance(spec["default"], bool)
        rows.append(ParamRow(name, _json(value), _json(spec["default"]), not same))
    return rows


def _run_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    now = timezone.now()
    program = get_program(run.program, include_retired=True)
    artifacts = [
        ArtifactRow(artifact, display.format_bytes(artifact.size), artifact.name.endswith(".safetensors"))
        for artifact in selectors.run_artifacts(run.pk)
    ]
    placement = launch_hooks.placements_of([run])[run.pk]
    queued = run.status == RunStatus.QUEUED
    waiting = launch_hooks.waiting_reason(run, placement["queue_position"]) if queued else ""
    return {
        "run": run,
        "row": _row(run, now),
        "assigned": placement["assigned"],
        "waiting": waiting,
        "queue_position": placement["queue_position"] if queued else None,
        "program": program,
        "timeline": display.timeline(run),
        "attempts": list(run.attempts.order_by("number")),
        "artifacts": artifacts,
        "params": _param_rows(run, program),
        "config": json.dumps(run.params, indent=2, sort_keys=True),
        "terminal": lifecycle.is_terminal(run),
        "cancellable": lifecycle.may_cancel(run) and can(page_principal(request), Action.RUN_CANCEL, run),
        "retryable": lifecycle.may_retry(run) and can(page_principal(request), Action.RUN_RETRY, run),
        "elapsed": display.duration_seconds(run, now),
        "now": now,
        "preload": module_graph("js/pages/run.js"),
        **code.context(request, run),
    }


@require_GET
@requires(Action.RUN_READ)
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = selectors.access_run(page_principal(request), run_id)
    return render(request, "runs/detail.html", _run_context(request, run))


@require_GET
@requires(Action.RUN_READ)
def run_fragments(request: HttpRequest, run_id: int) -> HttpResponse:
    """The run page's server-rendered parts that change with its status (summary, timeline,
    artifacts), for the page to swap in when a status frame arrives."""
    run = selectors.access_run(page_principal(request), run_id)
    return render(request, "runs/fragments.html", _run_context(request, run))


# -- launch --------------------------------------------------------------------------------------


def _launch_page(
    request: HttpRequest,
    *,
    program: Program | None,
    name: str,
    values: dict[str, Any],
    errors: dict[str, str],
    general: list[str],
    clone_of: Run | None = None,
    secrets: list[str] | None = None,
    placement: dict[str, Any] | None = None,
) -> HttpResponse:
    programs = all_programs()
    chosen = set(secrets or [])
    fields = launch.param_fields(program, values, errors) if program is not None else []
    return render(
        request,
        "runs/launch.html",
        {
            "programs": sorted(programs.values(), key=lambda p: (not p.builtin, p.name)),
            "program": program,
            "name": name,
            "fields": fields,
            "resources": resources.fields(request.user, placement or resources.defaults(clone_of), errors),
            "errors": errors,
            "general_errors": general,
            "error_count": len(errors) + len(general),
            "clone_of": clone_of,
            "secret_choices": [(secret, secret in chosen) for secret in usable_secret_names(request.user)],
            "preload": module_graph("js/pages/launch.js"),
        },
    )


@require_http_methods(["GET", "POST"])
@requires(Action.RUN_LAUNCH)
def launch_run(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _post_launch(request)
    programs = all_programs()
    clone_of: Run | None = None
    values: dict[str, Any] = {}
    name = ""
    program_name = request.GET.get("program", "")
    clone = request.GET.get("clone", "")
    if clone.isdigit():
        clone_of = selectors.access_run(page_principal(request), int(clone))
        program_name = program_name or clone_of.program
        if program_name == clone_of.program:
            values = dict(clone_of.params)
        name = f"{clone_of.name} (clone)"[: services.MAX_NAME_LENGTH]
    program = programs.get(program_name) or programs.get("tinygpt") or next(iter(programs.values()), None)
    if program is not None and clone_of is not None:
        # A param the program no longer has would only earn an "unknown param" error.
        values = {key: value for key, value in values.items() if key in program.params}
    return _launch_page(
        request,
        program=program,
        name=name,
        values=values,
        errors={},
        general=[],
        clone_of=clone_of,
        secrets=list(clone_of.secrets) if clone_of is not None else [],
    )


def _post_launch(request: HttpRequest) -> HttpResponse:
    program_name = request.POST.get("program", "")
    program = get_program(program_name)
    name = request.POST.get("name", "")
    params, shown = launch.posted_params(program, request.POST) if program is not None else ({}, {})
    secrets = request.POST.getlist("secrets")
    fleet, placement = resources.posted(request.POST)
    assert isinstance(request.user, User)  # `requires` has run
    try:
        # The very validation the API runs: one rule, one set of messages.
        checked = services.check_launch(
            name=name, program=program_name, params=params, secrets=secrets, owner=request.user, fleet=fleet
        )
    except services.LaunchError as error:
        fields = (
            {"name", "program", "secrets"}
            | resources.FIELD_NAMES
            | {launch.input_name(p) for p in (program.params if program else {})}
        )
        by_field, general = launch.split_errors(error.errors, fields)
        # 200 like any form shown again with its errors (success is a redirect).
        return _launch_page(
            request,
            program=program,
            name=name,
            values=shown,
            errors=by_field,
            general=general,
            secrets=secrets,
            placement=placement,
        )
    run = services.do_launch_run(
        request.user,
        checked,
        request_id=getattr(request, "request_id", ""),
        repeating_since=repeating_since(request),
    )
    return redirect("run-detail", run_id=run.pk)


# -- compare -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffRow:
    name: str
    values: list[str | None]
    differs: bool


def _compare_ids(params: QueryDict) -> list[int]:
    raw = [("run", part) for part in params.getlist("run")]
    raw += [("runs", part) for value in params.getlist("runs") for part in value.split(",")]
    ids: list[int] = []
    for field, part in raw:
        if not part.strip():
            continue
        run_id = parse_id(field, part)  # beyond bigint or not a number: a 400 naming the field
        if run_id not in ids:
            ids.append(run_id)
    return ids


@require_GET
@requires(Action.RUN_READ)
def compare(request: HttpRequest) -> HttpResponse:
    ids = _compare_ids(request.GET)
    problems: list[str] = []
    if len(ids) > MAX_COMPARE:
        problems.append(f"Compare at most {MAX_COMPARE} runs; the first {MAX_COMPARE} are shown.")
        ids = ids[:MAX_COMPARE]
    found = {
        run.pk: run
        for run in selectors.visible_runs(page_principal(request)).select_related("owner").filter(pk__in=ids)
    }
    missing = [run_id for run_id in ids if run_id not in found]
    if missing:
        problems.append("No such run: " + ", ".join(str(run_id) for run_id in missing) + ".")
    runs = [found[run_id] for run_id in ids if run_id in found]
    if ids and len(runs) < 2:
        problems.append("Pick at least two runs to compare.")
    names = sorted({name for run in runs for name in run.params})
    rows = []
    for name in names:
        values = [_json(run.params[name]) if name in run.params else None for run in runs]
        rows.append(DiffRow(name, values, len(set(values)) > 1))
    now = timezone.now()
    picked = [
        (
            run,
            _row(run, now),
            reverse("run-compare") + "?" + urlencode([("run", other.pk) for other in runs if other != run]),
        )
        for run in runs
    ]
    return render(
        request,
        "runs/compare.html",
        {
            "runs": runs,
            "picked": picked,
            "diff": rows,
            "differing": sum(row.differs for row in rows),
            "problems": problems,
            "ready": len(runs) >= 2,
            "max_compare": MAX_COMPARE,
            "preload": module_graph("js/pages/compare.js"),
        },
    )
