"""`/api/v1/programs/`: what a caller may launch, and the catalog admins manage.

Reads (everyone who may read runs): name, description, whether it is built in, the queue it runs
on, its params as a JSON Schema object (every param has a default, so `{}` is always valid), its
default resources. Retired programs are left out of the list unless `?include_retired=true`; one
retired program still answers by name (old runs name it). The command and environment a program
runs with are shown to admins only.

Writes (admins, `program.manage`): register (`POST`), edit (`PATCH`), retire and restore, and
infer a params schema from a script (`POST /api/v1/programs/infer-schema/`). The rules and the
audit records are in `runs.catalog` and `runs.params_inference`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.drf import request_principal
from accounts.policy import Action, can
from ops.api_errors import object_body
from runs import catalog, params_inference
from runs.programs import Program, all_programs, get_program


class ProgramSerializer(serializers.Serializer[Any]):
    """Documents a program for the OpenAPI schema; `describe` builds the body."""

    name = serializers.CharField()
    description = serializers.CharField()
    builtin = serializers.BooleanField()
    queue = serializers.CharField(help_text="the Celery queue its runs go to")
    launcher = serializers.ChoiceField(
        choices=["direct", "torchrun"], help_text="how it starts: itself, or once per device under torchrun"
    )
    params_schema = serializers.DictField(help_text="JSON Schema (an object) of the params")
    defaults = serializers.DictField(help_text="every param's default")
    resources = serializers.DictField(
        help_text='where its runs go when a launch names no resources: {"pool": ..., "gpus": ...}'
    )
    source = serializers.ChoiceField(  # type: ignore[assignment]  # a field named like Field.source
        choices=["builtin", "file", "seed", "api"],
        help_text="built in; the programs file, not in the catalog yet; the catalog, last written by "
        "the seed or through the API",
    )
    version = serializers.IntegerField(help_text="grows with every change of a catalog program; 0 elsewhere")
    retired = serializers.BooleanField()
    retired_at = serializers.DateTimeField(allow_null=True)
    command = serializers.ListField(child=serializers.CharField(), required=False, help_text="admins only")
    env = serializers.DictField(child=serializers.CharField(), required=False, help_text="admins only")
    nproc_per_node = serializers.IntegerField(required=False, help_text="admins only")


class ProgramWriteSerializer(serializers.Serializer[Any]):
    """Documents the body of a registration (every field but `name` and `command` optional) and of an
    edit (every field optional; `name` cannot change). Validation is in `runs.catalog`."""

    name = serializers.RegexField(r"^[a-z][a-z0-9_-]{0,63}$", required=False)
    command = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text='argv; "{python}" is the worker\'s interpreter',
    )
    description = serializers.CharField(required=False, allow_blank=True)
    params_schema = serializers.DictField(
        required=False, help_text='{"type": "object", "properties": {name: {type, default, ...}}}'
    )
    launcher = serializers.ChoiceField(choices=["direct", "torchrun"], required=False)
    nproc_per_node = serializers.IntegerField(required=False, min_value=1)
    env = serializers.DictField(child=serializers.CharField(), required=False)
    resources = serializers.DictField(required=False, help_text='{"pool": ..., "gpus": ...}')
    queue = serializers.CharField(required=False, allow_blank=True)


class InferRequestSerializer(serializers.Serializer[Any]):
    command = serializers.ListField(child=serializers.CharField())
    env = serializers.DictField(child=serializers.CharField(), required=False)


class InferResponseSerializer(serializers.Serializer[Any]):
    source = serializers.ChoiceField(choices=["argparse", "dataclass"])  # type: ignore[assignment]
    params_schema = serializers.DictField()
    skipped = serializers.DictField(child=serializers.CharField(), help_text="options left out, and why")


def describe(program: Program, *, full: bool = False) -> dict[str, Any]:
    properties = {name: dict(spec) for name, spec in program.params.items()}
    body: dict[str, Any] = {
        "name": program.name,
        "description": program.description,
        "builtin": program.builtin,
        "queue": program.queue or settings.CELERY_TASK_DEFAULT_QUEUE,
        "launcher": program.launcher,
        "params_schema": {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        },
        "defaults": {name: spec["default"] for name, spec in program.params.items()},
        "resources": {"pool": "default", "gpus": 0, **program.resources},
        "source": program.source,
        "version": program.version,
        "retired": program.retired_at is not None,
        "retired_at": program.retired_at.isoformat() if program.retired_at else None,
    }
    if full:
        body.update(
            {
                "command": list(program.written or program.command),
                "env": program.env,
                "nproc_per_node": program.nproc_per_node,
            }
        )
    return body


def _full(request: Request) -> bool:
    return can(request_principal(request), Action.PROGRAM_MANAGE)


def _answer(request: Request, name: str, code: int = status.HTTP_200_OK) -> Response:
    program = get_program(name, include_retired=True)
    assert program is not None  # just written
    return Response(describe(program, full=_full(request)), status=code)


def _failed(error: catalog.CatalogError) -> Exception:
    if error.status == 404:
        return Http404("No such program.")
    return ValidationError({field: [message] for field, message in error.errors.items()})


class ProgramListView(APIView):
    """Every program one may launch, built-in first, then by name; admins register more."""

    # Reading the catalogue is a read: viewers see programs and params on every run already.
    policy_actions = {"get": Action.RUN_READ, "post": Action.PROGRAM_MANAGE}

    @extend_schema(
        parameters=[OpenApiParameter("include_retired", bool, description="list retired programs too")],
        responses={200: ProgramSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        retired = request.query_params.get("include_retired", "") in {"1", "true", "yes"}
        programs = sorted(
            all_programs(include_retired=retired).values(), key=lambda p: (not p.builtin, p.name)
        )
        full = _full(request)
        return Response([describe(program, full=full) for program in programs])

    @extend_schema(request=ProgramWriteSerializer, responses={201: ProgramSerializer})
    def post(self, request: Request) -> Response:
        body = object_body(request.data, {"name", *catalog.FIELDS})
        try:
            row = catalog.do_register_program(request.user, body)
        except catalog.CatalogError as error:
            raise _failed(error) from None
        return _answer(request, row.name, status.HTTP_201_CREATED)


class ProgramDetailView(APIView):
    policy_actions = {"get": Action.RUN_READ, "patch": Action.PROGRAM_MANAGE}

    @extend_schema(responses={200: ProgramSerializer})
    def get(self, request: Request, name: str) -> Response:
        program = get_program(name, include_retired=True)
        if program is None:
            raise Http404("No such program.")
        return Response(describe(program, full=_full(request)))

    @extend_schema(request=ProgramWriteSerializer, responses={200: ProgramSerializer})
    def patch(self, request: Request, name: str) -> Response:
        body = object_body(request.data, {"name", *catalog.FIELDS})
        if "name" in body and body["name"] != name:
            raise ValidationError({"name": ["cannot be changed; register a program with the new name"]})
        body.pop("name", None)
        try:
            catalog.do_update_program(request.user, name, body)
        except catalog.CatalogError as error:
            raise _failed(error) from None
        return _answer(request, name)


class ProgramRetireView(APIView):
    """Retire a program: it leaves the list and takes no new launches or retries; runs already
    launched keep it. `restore` undoes it."""

    policy_actions = {"post": Action.PROGRAM_MANAGE}
    retire = True

    @extend_schema(request=None, responses={200: ProgramSerializer})
    def post(self, request: Request, name: str) -> Response:
        try:
            catalog.do_retire_program(request.user, name, retire=self.retire)
        except catalog.CatalogError as error:
            raise _failed(error) from None
        return _answer(request, name)


class ProgramRestoreView(ProgramRetireView):
    """Bring a retired program back: it is listed and launchable again."""

    retire = False


class ProgramInferSchemaView(APIView):
    """Run a Python program's script under a shim that reads its argparse options or its
    `CONTROLPLANE_PARAMS` dataclass, and answer the params schema to register it with."""

    policy_actions = {"post": Action.PROGRAM_MANAGE}

    @extend_schema(request=InferRequestSerializer, responses={200: InferResponseSerializer})
    def post(self, request: Request) -> Response:
        body = object_body(request.data, {"command", "env"})
        try:
            result = params_inference.do_infer_params_schema(
                request.user, body.get("command"), body.get("env")
            )
        except params_inference.InferenceError as error:
            raise ValidationError({field: [message] for field, message in error.errors.items()}) from None
        return Response(result)
