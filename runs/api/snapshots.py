"""`/api/v1/snapshots/`: code snapshots, content-addressed by the sha256 of their tar.gz.

`GET|HEAD /api/v1/snapshots/{sha256}/` says whether a snapshot is registered (404 if not), so a
client sends an unchanged directory once; `PUT` with the archive as the body (any content type)
registers it: 201 when created, 200 when it already was. `GET /api/v1/snapshots/limits/` tells
a client the limits before it packs. Every one needs `RUN_CODE` (accounts.policy).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.policy import Action
from runs import snapshots
from runs.models import CodeSnapshot


class SnapshotSerializer(serializers.ModelSerializer[CodeSnapshot]):
    created_by = serializers.CharField(source="created_by.username", default="", read_only=True)

    class Meta:
        model = CodeSnapshot
        fields = ["sha256", "size", "unpacked_size", "files", "created_by", "created_at"]
        read_only_fields = fields


class SnapshotLimitsView(APIView):
    policy_actions = {"get": Action.RUN_CODE}

    @extend_schema(
        responses={
            200: inline_serializer(
                "SnapshotLimits",
                {
                    "max_bytes": serializers.IntegerField(help_text="of the archive, compressed"),
                    "max_unpacked_bytes": serializers.IntegerField(),
                    "max_files": serializers.IntegerField(),
                },
            )
        }
    )
    def get(self, request: Request) -> Response:
        found = snapshots.limits()
        return Response(
            {
                "max_bytes": found.max_bytes,
                "max_unpacked_bytes": found.max_unpacked_bytes,
                "max_files": found.max_files,
            }
        )


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


class SnapshotView(APIView):
    policy_actions = {"get": Action.RUN_CODE, "head": Action.RUN_CODE, "put": Action.RUN_CODE}
    parser_classes: list[Any] = []  # the body is the archive, read raw by `put`

    @extend_schema(responses={200: SnapshotSerializer})
    def get(self, request: Request, sha256: str) -> Response:
        snapshot = snapshots.find_snapshot(sha256)
        if snapshot is None:
            raise Http404("No such snapshot.")
        return Response(SnapshotSerializer(snapshot).data)

    @extend_schema(
        # The archive's bytes (cpctl sends `application/gzip`; any content type is read the same).
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: SnapshotSerializer, 201: SnapshotSerializer},
    )
    def put(self, request: Request, sha256: str) -> Response:
        assert isinstance(request.user, User)  # the policy has run
        try:
            snapshots.check_upload_size(_declared_length(request))
            # One byte past the limit is enough to refuse a body that declared no length.
            data = request._request.read(snapshots.limits().max_bytes + 1)
            snapshot, created = snapshots.do_upload_snapshot(request.user, sha256, data)
        except snapshots.SnapshotError as error:
            return Response({error.field: [error.message]}, status=error.status)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(SnapshotSerializer(snapshot).data, status=code)
