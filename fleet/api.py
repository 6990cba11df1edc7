"""`/api/v1/workers/` (list, drain) and `/api/v1/quotas/` (GPU limits and use)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.policy import Action
from accounts.roles import Role, role_of
from audit import chain as audit
from fleet.models import Quota, Worker
from fleet.quotas import limit_of
from fleet.scheduler import schedule_pass_on_commit
from fleet.selectors import describe_workers
from fleet.services import do_drain_worker
from fleet.snapshot import gpus_held

MAX_QUOTA = 10_000


class WorkerSerializer(serializers.Serializer[Any]):
    """Documents a worker for the OpenAPI schema; `fleet.selectors.describe_workers` builds it."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    pool = serializers.CharField()
    host = serializers.CharField()
    state = serializers.ChoiceField(choices=["active", "draining", "lost"])
    heartbeat_at = serializers.DateTimeField()
    devices = serializers.ListField(child=serializers.DictField())


class WorkerListSerializer(serializers.Serializer[Any]):
    results = WorkerSerializer(many=True)


class QuotaSerializer(serializers.Serializer[Any]):
    user = serializers.CharField()
    user_id = serializers.IntegerField()
    max_gpus = serializers.IntegerField()
    default = serializers.BooleanField(help_text="the role's default (no quota set for the user)")
    gpus_in_use = serializers.IntegerField()


class QuotaListSerializer(serializers.Serializer[Any]):
    results = QuotaSerializer(many=True)


class QuotaUpdateSerializer(serializers.Serializer[Any]):
    max_gpus = serializers.IntegerField(allow_null=True, min_value=0, max_value=10_000)


class DrainSerializer(serializers.Serializer[Any]):
    preempt = serializers.BooleanField(required=False, help_text="also preempt its preemptible runs")


class WorkerListView(APIView):
    """Every worker the fleet has seen, by pool and name, with its devices and who holds them."""

    policy_actions = {"get": Action.FLEET_READ}

    @extend_schema(responses={200: WorkerListSerializer})
    def get(self, request: Request) -> Response:
        workers = list(Worker.objects.order_by("pool", "name")[:1000])
        return Response({"results": describe_workers(workers)})


class WorkerDrainView(APIView):
    """Stop new placements on a worker; `{"preempt": true}` also stops its preemptible runs."""

    policy_actions = {"post": Action.FLEET_MANAGE}

    @extend_schema(request=DrainSerializer, responses={202: WorkerSerializer})
    def post(self, request: Request, pk: int) -> Response:
        preempt = isinstance(request.data, dict) and request.data.get("preempt") is True
        worker, _ = do_drain_worker(request.user, pk, preempt=preempt)
        return Response(describe_workers([worker])[0], status=status.HTTP_202_ACCEPTED)


def _quota_row(user: User, used: dict[int, int]) -> dict[str, Any]:
    limit, default = limit_of(user)
    return {
        "user": user.username,
        "user_id": user.pk,
        "max_gpus": limit,
        "default": default,
        "gpus_in_use": used.get(user.pk, 0),
    }


class QuotaListView(APIView):
    """GPU quotas: limit and use. Admins see every user; others their own."""

    policy_actions = {"get": Action.FLEET_READ}

    @extend_schema(responses={200: QuotaListSerializer})
    def get(self, request: Request) -> Response:
        assert isinstance(request.user, User)
        users = User.objects.order_by("username").select_related("role_record")
        if role_of(request.user) != Role.ADMIN:
            users = users.filter(pk=request.user.pk)
        used = gpus_held()
        return Response({"results": [_quota_row(user, used) for user in users[:1000]]})


class QuotaDetailView(APIView):
    """`PATCH`/`PUT {"max_gpus": N}` sets a user's quota (admin); `null` restores the role default."""

    policy_actions = {"patch": Action.FLEET_MANAGE, "put": Action.FLEET_MANAGE}

    @extend_schema(request=QuotaUpdateSerializer, responses={200: QuotaSerializer})
    def patch(self, request: Request, pk: int) -> Response:
        user = User.objects.filter(pk=pk).first()
        if user is None:
            raise Http404("No such user.")
        if not isinstance(request.data, dict) or "max_gpus" not in request.data:
            raise ValidationError({"max_gpus": ["required: an integer, or null for the role's default"]})
        value = request.data["max_gpus"]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA
        ):
            raise ValidationError(
                {"max_gpus": [f"an integer between 0 and {MAX_QUOTA}, or null for the default"]}
            )
        with transaction.atomic():
            if value is None:
                Quota.objects.filter(user=user).delete()
            else:
                Quota.objects.update_or_create(user=user, defaults={"max_gpus": value})
            audit.record("fleet.quota", actor=request.user, target=user, details={"max_gpus": value})
            schedule_pass_on_commit("quota")
        return Response(_quota_row(user, gpus_held()))

    put = patch
