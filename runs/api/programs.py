"""`GET /api/v1/programs/` and `/api/v1/programs/{name}/`: what a caller may launch.

Read-only views of the registry (runs.programs): name, description, whether it is built in, the
queue it runs on, and its params as a JSON Schema object (every param has a default, so `{}` is
always valid). The command and environment a program runs with stay on the server.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.policy import Action
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


def describe(program: Program) -> dict[str, Any]:
    properties = {name: dict(spec) for name, spec in program.params.items()}
    return {
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
    }


class ProgramListView(APIView):
    """Every registered program, built-in first, then by name."""

    # Reading the catalogue is a read: viewers see programs and params on every run already.
    policy_actions = {"get": Action.RUN_READ}

    @extend_schema(responses={200: ProgramSerializer(many=True)})
    def get(self, request: Request) -> Response:
        programs = sorted(all_programs().values(), key=lambda p: (not p.builtin, p.name))
        return Response([describe(program) for program in programs])


class ProgramDetailView(APIView):
    policy_actions = {"get": Action.RUN_READ}

    @extend_schema(responses={200: ProgramSerializer})
    def get(self, request: Request, name: str) -> Response:
        program = get_program(name)
        if program is None:
            raise Http404("No such program.")
        return Response(describe(program))
