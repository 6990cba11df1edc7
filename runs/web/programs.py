"""The Programs pages (`/programs/`, admins): list, register, edit, retire and restore catalog
programs, and fill a params schema from the script (the same inference as the API).

Forms post to the services the API uses (`runs.catalog`, `runs.params_inference`), so one rule and
one set of messages serve both; an error names its field (`params_schema.lr.type`) and is shown
next to the field it belongs to.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.pages import requires
from accounts.policy import Action
from runs import catalog, params_inference
from runs.programs import LAUNCHERS, Program, all_programs, get_program

FORM_FIELDS = (
    "name",
    "description",
    "command",
    "params_schema",
    "launcher",
    "nproc_per_node",
    "env",
    "pool",
    "gpus",
    "queue",
)


def _form_of(program: Program | None) -> dict[str, str]:
    """A program as the form's text fields (the command one part a line, env KEY=VALUE lines)."""
    if program is None:
        return {
            "launcher": "direct",
            "nproc_per_node": "1",
            "params_schema": '{\n  "type": "object",\n  "properties": {}\n}',
        }
    schema = {"type": "object", "properties": program.params}
    return {
        "name": program.name,
        "description": program.description,
        "command": "\n".join(program.written or program.command),
        "params_schema": json.dumps(schema, indent=2),
        "launcher": program.launcher,
        "nproc_per_node": str(program.nproc_per_node),
        "env": "\n".join(f"{key}={value}" for key, value in program.env.items()),
        "pool": str(program.resources.get("pool", "")),
        "gpus": str(program.resources.get("gpus", "")),
        "queue": program.queue or "",
    }


def _body_of(form: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """The form as an API body; text the API would not understand is an error of its field."""
    body: dict[str, Any] = {
        "description": form.get("description", "").strip(),
        "command": [line.strip() for line in form.get("command", "").splitlines() if line.strip()],
        "launcher": form.get("launcher", "direct"),
        "queue": form.get("queue", "").strip(),
    }
    try:
        body["params_schema"] = json.loads(form.get("params_schema") or "{}")
    except json.JSONDecodeError as error:
        errors["params_schema"] = f"is not JSON: {error.msg} (line {error.lineno})"
    env: dict[str, str] = {}
    for line in form.get("env", "").splitlines():
        if line.strip():
            key, sep, value = line.partition("=")
            if not sep:
                errors["env"] = f"{line[:64]!r} is not KEY=VALUE"
            env[key.strip()] = value
    body["env"] = env
    resources: dict[str, Any] = {}
    if form.get("pool", "").strip():
        resources["pool"] = form["pool"].strip()
    for key in ("gpus", "nproc_per_node"):
        raw = form.get(key, "").strip()
        if raw:
            try:
                number = int(raw)
            except ValueError:
                errors[f"resources.{key}" if key == "gpus" else key] = "must be a whole number"
                continue
            if key == "gpus":
                resources["gpus"] = number
            elif body["launcher"] == "torchrun":
                body["nproc_per_node"] = number
    body["resources"] = resources
    return body


def _field(key: str) -> str:
    """The form field an error belongs to: `params_schema.lr.type` → params_schema."""
    if key.startswith("resources."):
        return key.split(".")[1] if key.split(".")[1] in {"pool", "gpus"} else "pool"
    head = key.split(".")[0]
    return head if head in FORM_FIELDS else "general"


def _page(
    request: HttpRequest,
    program: Program | None,
    form: dict[str, str],
    errors: dict[str, str],
    status: int = 200,
) -> HttpResponse:
    by_field: dict[str, list[str]] = {}
    for key, message in errors.items():
        label = key if "." in key else ""
        by_field.setdefault(_field(key), []).append(f"{label}: {message}" if label else message)
    return render(
        request,
        "runs/program_form.html",
        {
            "program": program,
            "form": form,
            "field_errors": by_field,
            "errors": errors,
            "error_count": len(errors),
            "launchers": LAUNCHERS,
        },
        status=status,
    )


def _posted(data: QueryDict) -> dict[str, str]:
    return {key: data.get(key, "") for key in FORM_FIELDS}


def _infer(request: HttpRequest, program: Program | None, form: dict[str, str]) -> HttpResponse:
    errors: dict[str, str] = {}
    body = _body_of(form, errors)
    try:
        result = params_inference.do_infer_params_schema(request.user, body["command"], body["env"])
    except params_inference.InferenceError as error:
        return _page(request, program, form, {**errors, **error.errors})
    form["params_schema"] = json.dumps(result["params_schema"], indent=2)
    skipped = "; ".join(f"{name}: {why}" for name, why in result["skipped"].items())
    found = len(result["params_schema"]["properties"])
    left_out = f" Left out: {skipped}" if skipped else ""
    messages.info(request, f"{found} params read from the script ({result['source']}).{left_out}")
    return _page(request, program, form, errors)


@require_GET
@requires(Action.PROGRAM_MANAGE)
def program_list(request: HttpRequest) -> HttpResponse:
    programs = sorted(all_programs(include_retired=True).values(), key=lambda p: (not p.builtin, p.name))
    return render(request, "runs/programs.html", {"programs": programs})


@require_http_methods(["GET", "POST"])
@requires(Action.PROGRAM_MANAGE)
def program_create(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _page(request, None, _form_of(None), {})
    form = _posted(request.POST)
    if "infer" in request.POST:
        return _infer(request, None, form)
    errors: dict[str, str] = {}
    body = {"name": form["name"].strip(), **_body_of(form, errors)}
    if errors:
        return _page(request, None, form, errors)
    try:
        catalog.do_register_program(request.user, body)
    except catalog.CatalogError as error:
        return _page(request, None, form, error.errors)
    messages.success(request, f"Program {body['name']} registered: it can be launched now.")
    return redirect("program-page-list")


def _program(name: str) -> Program:
    program = get_program(name, include_retired=True)
    if program is None:
        raise Http404("No such program.")
    return program


@require_http_methods(["GET", "POST"])
@requires(Action.PROGRAM_MANAGE)
def program_edit(request: HttpRequest, name: str) -> HttpResponse:
    program = _program(name)
    if request.method == "GET":
        return _page(request, program, _form_of(program), {})
    form = {**_posted(request.POST), "name": program.name}
    if "infer" in request.POST:
        return _infer(request, program, form)
    errors: dict[str, str] = {}
    body = _body_of(form, errors)
    if errors:
        return _page(request, program, form, errors)
    try:
        row = catalog.do_update_program(request.user, program.name, body)
    except catalog.CatalogError as error:
        return _page(request, program, form, error.errors)
    messages.success(request, f"Program {row.name} saved (version {row.version}).")
    return redirect("program-page-list")


@require_POST
@requires(Action.PROGRAM_MANAGE)
def program_retire(request: HttpRequest, name: str) -> HttpResponse:
    retire = request.POST.get("restore") != "true"
    try:
        catalog.do_retire_program(request.user, _program(name).name, retire=retire)
    except catalog.CatalogError as error:
        messages.error(request, "; ".join(error.errors.values()))
        return redirect("program-page-list")
    done = "retired: it takes no new runs" if retire else "restored: it can be launched again"
    messages.success(request, f"Program {name} {done}.")
    return redirect("program-page-list")
