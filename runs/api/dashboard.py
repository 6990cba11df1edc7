"""Read endpoints the dashboard needs beyond the public run API.

They are ordinary API endpoints (bearer token or session, JSON errors) so scripts can use them
too: the live state of a page of runs, a log page below a seq (opening a log at its tail), chart
series with min/max bands and times, a safetensors header preview, and the whole log as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.http import Http404, HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.drf import request_principal
from accounts.http import http_principal, refusal
from accounts.policy import Action
from runs import launch_hooks, selectors
from runs.api.serializers import LogLineSerializer
from runs.api.views import int_param
from runs.models import Run
from runs.safetensors_header import HeaderError, read_header_from
from runs.storage import ObjectMissing, StorageUnavailable, open_artifact
from vault.services import masking_redactor

MAX_STATE_IDS = 200
DEFAULT_CHART_POINTS = 2_000
MAX_CHART_POINTS = 20_000
MAX_PREVIEW_TENSORS = 5_000
LOG_TEXT_PAGE = 10_000


def run_state(run: Run, waiting_reason: str = "") -> dict[str, Any]:
    """The fields of a run that change while it lives (what the runs list and run page poll);
    `waiting_reason` is why a queued run waits, "" for any other."""
    return {
        "id": run.pk,
        "status": run.status,
        "attempt": run.attempt,
        "phase": run.phase,
        "progress": (
            None if run.progress_step is None else {"step": run.progress_step, "total": run.progress_total}
        ),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "waiting_reason": waiting_reason,
    }


class RunStatesView(APIView):
    """`GET /api/v1/runs/states/?ids=1,2,3`: the live fields of up to 200 runs in one query."""

    policy_actions = {"get": Action.RUN_READ}

    @extend_schema(
        parameters=[OpenApiParameter("ids", str, required=True, description="comma-separated run ids")],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        raw = request.query_params.get("ids", "")
        try:
            ids = sorted({int(part) for part in raw.split(",") if part.strip()})
        except ValueError:
            raise ValidationError({"ids": ["must be comma-separated run ids"]}) from None
        if len(ids) > MAX_STATE_IDS:
            raise ValidationError({"ids": [f"at most {MAX_STATE_IDS} ids"]})
        runs = selectors.run_states(request_principal(request), ids) if ids else []
        waiting = launch_hooks.waiting_reasons(runs)
        return Response(
            {
                # The server's clock, so a client can tick durations without trusting its own.
                "now": timezone.now(),
                "latest_id": selectors.latest_run_id(request_principal(request)),
                "runs": [run_state(run, waiting.get(run.pk, "")) for run in runs],
            }
        )


class LogTailView(APIView):
    """`GET /api/v1/runs/{id}/logs/tail/?before=N&limit=L`: the lines just below seq N.

    Without `before` these are the newest lines: how a page opens a long log at its tail. Pages
    further up follow with `before=<first seq of the page>`.
    """

    policy_actions = {"get": Action.RUN_READ}

    @extend_schema(
        parameters=[OpenApiParameter("before", int), OpenApiParameter("limit", int)],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, run_id: int) -> Response:
        run = selectors.access_run(request_principal(request), run_id)
        before = int_param(request, "before", None, minimum=1, maximum=2**62)
        limit = int_param(request, "limit", 1_000, minimum=1, maximum=selectors.MAX_LOG_PAGE) or 1_000
        lines = selectors.log_lines_before(run.pk, before, limit)
        first = lines[0].seq if lines else before
        return Response(
            {
                "results": LogLineSerializer(lines, many=True).data,
                "has_older": bool(first and first > 1 and selectors.has_log_lines_before(run.pk, first)),
                "last_seq": run.log_seq,
                "run_status": run.status,
            }
        )


class ChartsView(APIView):
    """`GET /api/v1/runs/{id}/charts/?max_points=M[&key=K...]`: every series (or those named),
    each at most M values: raw points, or per-bucket mean, min and max with the bucket's first
    step and time. Ask for about twice the chart's width in pixels."""

    policy_actions = {"get": Action.RUN_READ}

    @extend_schema(
        parameters=[
            OpenApiParameter("max_points", int, description=f"2 to {MAX_CHART_POINTS}"),
            OpenApiParameter("key", str, many=True, description="only these series"),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, run_id: int) -> Response:
        run = selectors.access_run(request_principal(request), run_id)
        max_points = (
            int_param(request, "max_points", DEFAULT_CHART_POINTS, minimum=2, maximum=MAX_CHART_POINTS)
            or DEFAULT_CHART_POINTS
        )
        keys = [key[:200] for key in request.query_params.getlist("key") if key] or None
        series = selectors.chart_series(run, keys, max_points)
        return Response(
            {
                "run_id": run.pk,
                "max_points": max_points,
                "series": [
                    {
                        "key": item.key,
                        "bucket_steps": item.bucket_steps,
                        "steps": item.steps,
                        "ts": item.ts,
                        "values": item.values,
                        "low": item.low,
                        "high": item.high,
                    }
                    for item in series
                ],
            }
        )


class ArtifactPreviewView(APIView):
    """`GET /api/v1/artifacts/{id}/preview/`: a .safetensors file's header (tensor names,
    dtypes, shapes, parameter count, metadata), read without loading any tensor."""

    policy_actions = {"get": Action.RUN_READ}

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, artifact_id: int) -> Response:
        artifact = selectors.access_artifact(request_principal(request), artifact_id)
        if not artifact.name.endswith(".safetensors"):
            return Response({"detail": "Only .safetensors files have a preview.", "code": "no_preview"}, 404)
        try:
            header = read_header_from(
                lambda start, length: b"".join(open_artifact(artifact.storage_key, start, length))
            )
        except ObjectMissing:
            return Response({"detail": "The artifact's file is missing from storage.", "code": "gone"}, 410)
        except StorageUnavailable as error:
            return Response({"detail": f"Object storage is unavailable: {error}", "code": "unavailable"}, 503)
        except HeaderError as error:
            return Response({"detail": f"Unreadable header: {error}", "code": "bad_header"}, 422)
        # The header is the program's own writing, read now from the file: mask the run's secrets
        # in it as the supervisor masked everything else it stored.
        mask = masking_redactor(artifact.run.secrets)
        return Response(
            {
                "id": artifact.pk,
                "name": artifact.name,
                "size": artifact.size,
                "sha256": artifact.sha256,
                "parameters": header.parameters,
                "tensor_count": len(header.tensors),
                "tensors": [
                    {
                        "name": mask.text(t.name),
                        "dtype": t.dtype,
                        "shape": list(t.shape),
                        "parameters": t.parameters,
                    }
                    for t in header.tensors[:MAX_PREVIEW_TENSORS]
                ],
                "metadata": mask.value(header.metadata),
            }
        )


# -- the whole log as text ------------------------------------------------------------------------


def _access(request: HttpRequest, run_id: int) -> Run | JsonResponse:
    principal = http_principal(request)
    refused = refusal(principal, Action.RUN_READ)
    if refused is not None:
        return refused
    try:
        return selectors.access_run(principal, run_id)
    except Http404:
        return JsonResponse({"detail": "Not found."}, status=404)


def format_log_line(ts: datetime, stream: str, line: str) -> str:
    stamp = ts.astimezone(UTC).isoformat(timespec="milliseconds")[:-6]  # without "+00:00"
    return f"{stamp}Z {stream:<6} {line}\n"


async def _log_pages(run_id: int, last_seq: int) -> AsyncIterator[bytes]:
    after = 0
    while after < last_seq:
        rows = await sync_to_async(selectors.log_rows_after)(run_id, after, last_seq, LOG_TEXT_PAGE)
        if not rows:
            return
        yield "".join([format_log_line(ts, stream, line) for _, ts, stream, line in rows]).encode()
        after = rows[-1][0]


@require_safe
async def log_text(request: HttpRequest, run_id: int) -> HttpResponseBase:
    """`GET /api/v1/runs/{id}/logs.txt`: every line up to now, `<ts> <stream> <line>` per line.

    An async iterator of keyset pages: memory stays flat for a log of millions of lines (a sync
    iterator would be buffered whole by Django under ASGI). A live run's download ends at the
    last line committed when the request arrived.
    """
    found = await sync_to_async(_access)(request, run_id)
    if isinstance(found, JsonResponse):
        return found
    body = _log_pages(found.pk, found.log_seq) if request.method == "GET" else _nothing()
    response = StreamingHttpResponse(body, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="run-{found.pk}-log.txt"'
    response["Cache-Control"] = "private, no-store"
    return response


# -- a whole metric series, streamed ---------------------------------------------------------------

# 10,000 points a page: pages of 50,000 took the server's RSS up 27 MiB at a million points for
# no measurable gain (bench/bench_export.py); the formatting below was the cost.
METRIC_EXPORT_PAGE = 10_000


def json_number(value: float | None) -> str:
    """`value` as json.dumps writes it (repr for finite floats), without its per-call cost."""
    if value is None:
        return "null"
    return repr(value) if math.isfinite(value) else json.dumps(value)


def ndjson_line(step: int, value: float | None) -> str:
    """Byte for byte `json.dumps({"step": step, "value": value}) + "\\n"`, three times faster."""
    return f'{{"step": {step}, "value": {json_number(value)}}}\n'


async def _metric_pages(series_id: int | None, csv: bool) -> AsyncIterator[bytes]:
    if csv:
        yield b"step,value\n"
    if series_id is None:
        return
    after = -1
    while True:
        page, more = await sync_to_async(selectors.metric_page)(series_id, after, METRIC_EXPORT_PAGE)
        if not page:
            return
        if csv:
            text = "".join([f"{p.step},{'' if p.value is None else repr(p.value)}\n" for p in page])
        else:
            text = "".join([ndjson_line(p.step, p.value) for p in page])
        yield text.encode()
        after = page[-1].step
        if not more:
            return


@require_safe
async def metric_export(request: HttpRequest, run_id: int) -> HttpResponseBase:
    """`GET /api/v1/runs/{id}/metrics/export/?key=K&format=ndjson|csv`: every point of a series.

    Keyset pages of METRIC_EXPORT_PAGE points through an async iterator, like the log download:
    memory stays flat at a million points; a live run's export ends at the newest point it reaches.
    """
    found = await sync_to_async(_access)(request, run_id)
    if isinstance(found, JsonResponse):
        return found
    key = request.GET.get("key", "")[:200]
    kind = request.GET.get("format", "ndjson")
    if not key:
        return JsonResponse({"key": ["This field is required."]}, status=400)
    if kind not in {"ndjson", "csv"}:
        return JsonResponse({"format": ["ndjson or csv"]}, status=400)
    # A key the run has not reported (yet) is an empty series, as on the metrics endpoint.
    series_id = await sync_to_async(selectors.series_id_for)(found.pk, key)
    csv = kind == "csv"
    body = _metric_pages(series_id, csv) if request.method == "GET" else _nothing()
    content_type = "text/csv; charset=utf-8" if csv else "application/x-ndjson"
    response = StreamingHttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="run-{found.pk}-metric.{kind}"'
    response["Cache-Control"] = "private, no-store"
    return response


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""
