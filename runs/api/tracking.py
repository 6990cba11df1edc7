"""Tracking mode's REST side (runs/tracking.py holds the rules): start an external run, report a
batch of events into it, upload an artifact. Bodies are read raw and bounded before they are read:
413 with the limit in words."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.drf import request_principal
from accounts.policy import Action, decide, record_denial
from runs import selectors, tracking, tracking_files
from runs.api.serializers import ArtifactSerializer, RunSerializer
from runs.models import Run

EXTERNAL_FIELDS = {"name", "program", "params", "external"}


def start_external(request: Request, body: dict[str, Any]) -> Response:
    """`POST /api/v1/runs/` with `"program": null` (or `"external": true`): 201 with the run and its
    run-scoped token, shown once (`run_token`)."""
    errors = {name: ["not used by an external run"] for name in sorted(set(body) - EXTERNAL_FIELDS)[:10]}
    try:
        name, params = tracking.check_external_start(name=body.get("name"), params=body.get("params"))
    except tracking.ReportError as error:
        errors.update({field: [message] for field, message in error.errors.items()})
    if errors:
        raise ValidationError(errors)
    assert isinstance(request.user, User)
    run, token = tracking.do_start_external_run(
        request.user, name, params, request_id=getattr(request, "request_id", "")
    )
    return Response({**RunSerializer(run).data, "run_token": token}, status=status.HTTP_201_CREATED)


def _reportable_run(request: Request, run_id: int) -> Run:
    """The run to report into: a run-scoped token's own (any other id is a 403, existing or not),
    else a run the caller sees (404 otherwise) and may report into (403 otherwise)."""
    principal = request_principal(request)
    token = principal.token
    if token is not None and token.run_id is not None and token.run_id != run_id:
        decision = decide(principal, Action.RUN_REPORT, Run(pk=run_id))
        record_denial(principal, Action.RUN_REPORT, decision)
        raise PermissionDenied(decision.reason)
    if token is not None and token.run_id is not None:
        run = Run.objects.select_related("owner").filter(pk=run_id).first()
        if run is None:
            raise Http404("No such run.")
    else:
        run = selectors.access_run(principal, run_id)
    decision = decide(principal, Action.RUN_REPORT, run)
    if not decision.allowed:
        record_denial(principal, Action.RUN_REPORT, decision, target=run)
        raise PermissionDenied(decision.reason)
    return run


def _too_large(limit: int, what: str) -> Response:
    return Response(
        {"detail": f"{what} is larger than {limit} bytes", "code": "too_large", "limit": limit},
        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


def _declared_length(request: Request) -> int | None:
    raw = request.META.get("CONTENT_LENGTH") or ""
    try:
        return int(raw) if raw else None
    except ValueError:
        raise ValidationError({"Content-Length": ["must be an integer"]}) from None


class RawBodyParser(BaseParser):
    """Accepts any media type; the views read the body themselves (bounded)."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return None


class ReportView(APIView):
    """`POST /api/v1/runs/{id}/report/?batch=N`: JSON-lines events, applied once per batch number."""

    policy_actions = {"post": Action.RUN_REPORT}
    parser_classes = [RawBodyParser]

    @extend_schema(
        parameters=[OpenApiParameter("batch", int, required=True, description="1, 2, ...: idempotency key")],
        request={
            "text/plain": {"type": "string", "description": "JSON lines (sent as application/x-ndjson)"}
        },
        responses={200: dict},
    )
    def post(self, request: Request, run_id: int) -> Response:
        raw = request.query_params.get("batch", "")
        if not raw.isdigit() or not 1 <= int(raw) <= 2**62:
            raise ValidationError({"batch": ["a batch number from 1 (the first batch) upward is required"]})
        limit = int(settings.CONTROLPLANE["REPORT_MAX_BYTES"])
        declared = _declared_length(request)
        if declared is not None and declared > limit:
            return _too_large(limit, "a report batch")
        run = _reportable_run(request, run_id)
        body = request._request.read(limit + 1)
        if len(body) > limit:
            return _too_large(limit, "a report batch")
        try:
            result = tracking.do_report(run, int(raw), body)
        except tracking.ReportError as error:
            return Response(error.errors, status=error.status)
        return Response(result)


class ArtifactUploadView(APIView):
    """`PUT /api/v1/runs/{id}/artifacts/{name}` with the file as the body and its sha256 in
    `X-Content-SHA256`: stored where program artifacts are, registered once complete."""

    policy_actions = {"put": Action.RUN_REPORT}
    parser_classes = [RawBodyParser]

    @extend_schema(
        request={"application/octet-stream": {"type": "string"}}, responses={201: ArtifactSerializer}
    )
    def put(self, request: Request, run_id: int, name: str) -> Response:
        limit = int(settings.CONTROLPLANE["ARTIFACT_UPLOAD_MAX_BYTES"])
        declared = _declared_length(request)
        if declared is not None and declared > limit:
            return _too_large(limit, "an artifact")
        run = _reportable_run(request, run_id)
        try:
            artifact = tracking_files.do_upload_artifact(
                run,
                name,
                request._request,
                expected_sha256=request.headers.get("X-Content-SHA256", ""),
                kind=request.query_params.get("kind", "file"),
                limit=limit,
                actor=run.owner,
            )
        except tracking.ReportError as error:
            return Response(error.errors, status=error.status)
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_201_CREATED)
