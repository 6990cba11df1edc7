"""REST views: parse the request, call a selector or service, serialize. No rules live here."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.drf import request_principal, require
from accounts.policy import Action
from ops.middleware import repeating_since
from runs import selectors, services
from runs.api import tracking
from runs.api.serializers import (
    ArtifactSerializer,
    DeadLetterSerializer,
    LaunchSerializer,
    LogLineSerializer,
    RunSerializer,
)
from runs.models import Run, RunStatus

LAUNCH_FIELDS = {
    "name",
    "program",
    "params",
    "secrets",
    "max_attempts",
    "max_duration_seconds",
    "queue_ttl_seconds",
    "resources",
    "priority",
    "preemptible",
    "code",
    "external",
}


def int_param(request: Request, name: str, default: int | None, *, minimum: int, maximum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: [f"must be an integer, got {raw[:40]!r}"]}) from None
    if not minimum <= value <= maximum:
        raise ValidationError({name: [f"must be between {minimum} and {maximum}"]})
    return value


def _user(request: Request) -> User | None:
    return request.user if isinstance(request.user, User) else None


class RunViewSet(viewsets.GenericViewSet[Run]):
    serializer_class = RunSerializer
    lookup_value_regex = "[0-9]+"
    policy_actions = {
        "list": Action.RUN_READ,
        "retrieve": Action.RUN_READ,
        "logs": Action.RUN_READ,
        "metrics": Action.RUN_READ,
        "artifacts": Action.RUN_READ,
        "create": Action.RUN_LAUNCH,
        "cancel": Action.RUN_CANCEL,
        "retry": Action.RUN_RETRY,
        "clone": Action.RUN_LAUNCH,
    }

    def get_queryset(self) -> QuerySet[Run]:
        queryset = selectors.visible_runs(request_principal(self.request)).select_related("owner")
        wanted = self.request.query_params.get("status")
        if wanted:
            statuses = [s.strip() for s in wanted.split(",") if s.strip()]
            unknown = [s for s in statuses if s not in RunStatus.values]
            if unknown:
                raise ValidationError(
                    {"status": [f"unknown status {unknown[0][:32]!r}; use {', '.join(RunStatus.values)}"]}
                )
            queryset = queryset.filter(status__in=statuses)
        # The dashboard's filters (same selector as the runs page): owner username, program, name text.
        params = self.request.query_params
        return selectors.filter_runs(
            queryset,
            selectors.RunFilters(
                owner=params.get("owner", "")[:150],
                program=params.get("program", "")[:64],
                text=params.get("q", "")[:200],
            ),
        )

    def get_object(self) -> Run:
        try:
            run_id = int(self.kwargs["pk"])
        except (TypeError, ValueError):
            raise Http404("No such run.") from None
        run = selectors.access_run(request_principal(self.request), run_id)  # unseen: 404
        self.check_object_permissions(self.request, run)  # seen, not one's to act on: 403
        return run

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, description="comma-separated statuses"),
            OpenApiParameter("owner", str, description="owner's username"),
            OpenApiParameter("program", str),
            OpenApiParameter("q", str, description="case-insensitive text in the name"),
        ]
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(RunSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(RunSerializer(self.get_object()).data)

    @extend_schema(request=LaunchSerializer, responses={201: RunSerializer})
    def create(self, request: Request) -> Response:
        body: Any = request.data
        if not isinstance(body, dict):
            raise ValidationError({"non_field_errors": ["the body must be a JSON object"]})
        unknown = sorted(set(body) - LAUNCH_FIELDS)
        if unknown:
            raise ValidationError({name: ["unknown field"] for name in unknown[:10]})
        if body.get("code") is not None:
            require(request, Action.RUN_CODE)
        if body.get("external") is True or ("program" in body and body["program"] is None):
            return tracking.start_external(request, body)  # tracking mode: no program, no worker
        try:
            launch = services.check_launch(
                name=body.get("name"),
                program=body.get("program"),
                params=body.get("params"),
                secrets=body.get("secrets"),
                limits={name: body[name] for name in services.LIMIT_FIELDS if name in body},
                owner=_user(request),
                fleet={name: body.get(name) for name in ("resources", "priority", "preemptible")},
                code=body.get("code"),
            )
        except services.LaunchError as error:
            raise ValidationError({field: [message] for field, message in error.errors.items()}) from None
        assert isinstance(request.user, User)  # IsAuthenticated has run
        run = services.do_launch_run(
            request.user,
            launch,
            request_id=getattr(request, "request_id", ""),
            repeating_since=repeating_since(request._request),
        )
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: RunSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        try:
            run = services.do_cancel_run(self.get_object(), actor=_user(request))
        except services.CancelError as error:
            return Response(
                {"detail": str(error), "code": "not_cancellable"}, status=status.HTTP_409_CONFLICT
            )
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: RunSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        source = self.get_object()  # a code run's retry also needs RUN_CODE (accounts.policy.decide)
        try:
            run = services.do_retry_run(
                source, request_id=getattr(request, "request_id", ""), actor=_user(request)
            )
        except services.RetryError as error:
            return Response({"detail": str(error), "code": "not_retryable"}, status=status.HTTP_409_CONFLICT)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def clone(self, request: Request, pk: str) -> Response:
        """A new run like this one: its program and params, or its code snapshot and command."""
        source = self.get_object()
        if source.kind == "code":
            require(request, Action.RUN_CODE)
        assert isinstance(request.user, User)
        try:
            run = services.do_clone_run(source, request.user, request_id=getattr(request, "request_id", ""))
        except services.LaunchError as error:
            raise ValidationError({field: [message] for field, message in error.errors.items()}) from None
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("after", int), OpenApiParameter("limit", int)],
        responses={
            200: inline_serializer(
                "LogPage",
                {
                    "results": LogLineSerializer(many=True),
                    "next_after": serializers.IntegerField(),
                    "has_more": serializers.BooleanField(),
                    "run_status": serializers.CharField(),
                },
            )
        },
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str) -> Response:
        run = self.get_object()
        after = int_param(request, "after", 0, minimum=0, maximum=2**62) or 0
        limit = int_param(request, "limit", 1_000, minimum=1, maximum=selectors.MAX_LOG_PAGE) or 1_000
        lines = selectors.log_lines_after(run.pk, after, limit)
        last = lines[-1].seq if lines else after
        return Response(
            {
                "results": LogLineSerializer(lines, many=True).data,
                "next_after": last,
                "has_more": len(lines) == limit,
                "run_status": run.status,
            }
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("key", str, required=True),
            OpenApiParameter("max_points", int, description="downsample the whole series to at most this"),
            OpenApiParameter("after_step", int, description="raw points: those after this step"),
            OpenApiParameter("limit", int, description=f"raw points: at most this many (<= {100_000})"),
        ],
        responses={
            200: inline_serializer(
                "MetricSeries",
                {
                    "key": serializers.CharField(),
                    "points": inline_serializer(
                        "MetricPoint",
                        {
                            "step": serializers.IntegerField(),
                            "value": serializers.FloatField(allow_null=True),
                        },
                        many=True,
                    ),
                    "truncated": serializers.BooleanField(),
                    "next": serializers.URLField(allow_null=True),
                },
            )
        },
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request: Request, pk: str) -> Response:
        run = self.get_object()
        key = request.query_params.get("key", "")
        if not key:
            keys = selectors.metric_keys(run.pk)
            raise ValidationError({"key": [f"required; this run has: {', '.join(keys) or 'no metrics yet'}"]})
        max_points = int_param(request, "max_points", None, minimum=2, maximum=selectors.MAX_RAW_POINTS)
        if max_points is not None:
            # The whole series, downsampled (min and max of each bucket): never truncated.
            points = selectors.metric_points(run.pk, key[:200], max_points)
            return Response(
                {
                    "key": key,
                    "points": [{"step": p.step, "value": p.value} for p in points],
                    "truncated": False,
                    "next": None,
                }
            )
        # Raw points, a keyset page at a time: `next` follows on from the page's last step, so
        # every point is read exactly once while the run keeps writing. `truncated`: more follow.
        after = int_param(request, "after_step", -1, minimum=-1, maximum=2**62)
        limit = int_param(
            request, "limit", selectors.MAX_RAW_POINTS, minimum=1, maximum=selectors.MAX_RAW_POINTS
        )
        assert after is not None and limit is not None
        series_id = selectors.series_id_for(run.pk, key[:200])
        page, more = selectors.metric_page(series_id, after, limit) if series_id is not None else ([], False)
        next_url = None
        if more:
            query = request.query_params.copy()
            query["after_step"] = str(page[-1].step)
            query["limit"] = str(limit)
            next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response(
            {
                "key": key,
                "points": [{"step": p.step, "value": p.value} for p in page],
                "truncated": more,
                "next": next_url,
                "next_after_step": page[-1].step if page else after,
            }
        )

    @extend_schema(responses={200: ArtifactSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=None)
    def artifacts(self, request: Request, pk: str) -> Response:
        run = self.get_object()
        serializer = ArtifactSerializer(
            selectors.run_artifacts(run.pk), many=True, context={"request": request}
        )
        return Response(serializer.data)


class DeadLetterViewSet(viewsets.GenericViewSet[Run]):
    """Runs that spent their attempts: an admin requeues (resume from the newest checkpoint) or
    discards them."""

    serializer_class = DeadLetterSerializer
    policy_actions = dict.fromkeys(("list", "requeue", "discard"), Action.DEAD_LETTER_MANAGE)
    lookup_value_regex = "[0-9]+"

    def get_queryset(self) -> QuerySet[Run]:
        return selectors.dead_letters(request_principal(self.request))

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(DeadLetterSerializer(page, many=True).data)

    def _act(self, pk: str, action: Any) -> Response:
        run = self.get_queryset().filter(pk=int(pk)).first()
        if run is None:
            raise Http404("No such dead letter.")
        self.check_object_permissions(self.request, run)
        assert isinstance(self.request.user, User)
        try:
            run = action(run, actor=self.request.user)
        except services.DeadLetterError as error:
            return Response({"detail": str(error), "code": "not_dead"}, status=status.HTTP_409_CONFLICT)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: RunSerializer})
    @action(detail=True, methods=["post"])
    def requeue(self, request: Request, pk: str) -> Response:
        return self._act(pk, services.do_requeue_dead_run)

    @extend_schema(request=None, responses={202: RunSerializer})
    @action(detail=True, methods=["post"])
    def discard(self, request: Request, pk: str) -> Response:
        return self._act(pk, services.do_discard_dead_run)
