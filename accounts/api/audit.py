from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.drf import request_principal
from accounts.policy import Action, restrict
from audit.chain import verify_chain
from audit.filters import FilterError, filter_records, parse_filters
from audit.models import AuditRecord
from ops.pagination import SafeCursorPagination


class AuditRecordSerializer(serializers.ModelSerializer[AuditRecord]):
    class Meta:
        model = AuditRecord
        fields = [
            "id",
            "created_at",
            "actor_id",
            "actor",
            "actor_role",
            "action",
            "target_type",
            "target_id",
            "outcome",
            "ip",
            "user_agent",
            "request_id",
            "details",
            "prev_hash",
            "hash",
        ]


class VerificationSerializer(serializers.Serializer[None]):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField(help_text="records whose hash and link were checked")
    first_broken_id = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)
    checkpoints_checked = serializers.IntegerField()
    broken_checkpoint_id = serializers.IntegerField(allow_null=True)
    checkpoint_problem = serializers.CharField(allow_blank=True)
    covered_up_to = serializers.IntegerField(help_text="the newest signed checkpoint covers records 1..N")
    anchor_sinks_checked = serializers.IntegerField(help_text="anchor sinks compared with the database")
    anchored_checkpoint_id = serializers.IntegerField(help_text="the newest checkpoint in an external anchor")
    anchored_up_to = serializers.IntegerField(help_text="the newest external anchor covers records 1..N")
    anchor_problem = serializers.CharField(allow_blank=True)


class AuditCursorPagination(SafeCursorPagination):
    # ops.pagination: a made-up cursor is a 400 naming `cursor`, never a 404 or a 500.
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


FILTER_PARAMETERS = [
    OpenApiParameter(
        "action", str, description="one action, or several comma-separated (auth.sign_in,run.launch)"
    ),
    OpenApiParameter("actor", str, description="the actor's username"),
    OpenApiParameter("outcome", str, description="success, failure or denied"),
    OpenApiParameter("target_type", str, description="run, user, apitoken, artifact, …"),
    OpenApiParameter("target_id", str),
    OpenApiParameter("since", str, description="ISO 8601 date or date-time (UTC when no zone), inclusive"),
    OpenApiParameter("until", str, description="ISO 8601 date (the whole day) or date-time, exclusive"),
]


class AuditViewSet(viewsets.ReadOnlyModelViewSet[AuditRecord]):
    """The audit log (admins only), newest first, cursor-paginated, with filters."""

    serializer_class = AuditRecordSerializer
    pagination_class = AuditCursorPagination
    lookup_value_regex = "[0-9]+"
    policy_actions = dict.fromkeys(("list", "retrieve", "verify"), Action.AUDIT_READ)

    def get_queryset(self) -> QuerySet[AuditRecord]:
        queryset = restrict(request_principal(self.request), Action.AUDIT_READ, AuditRecord.objects.all())
        if self.action != "list":
            return queryset
        try:
            filters = parse_filters(self.request.query_params)
        except FilterError as error:
            raise ValidationError({name: [message] for name, message in error.errors.items()}) from None
        return filter_records(queryset, filters)

    @extend_schema(parameters=FILTER_PARAMETERS)
    def list(self, request: Request) -> Response:
        return super().list(request)

    @extend_schema(responses={200: VerificationSerializer})
    @action(detail=False, methods=["get"], pagination_class=None)
    def verify(self, request: Request) -> Response:
        return Response(verify_chain().as_dict())
