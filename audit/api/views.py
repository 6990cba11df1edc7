from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.policy import Action
from audit.chain import verify_chain
from audit.models import AuditRecord


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


class AuditViewSet(viewsets.ReadOnlyModelViewSet[AuditRecord]):
    """The audit log (admins only), newest first; filter by `action`."""

    serializer_class = AuditRecordSerializer
    policy_actions = dict.fromkeys(("list", "retrieve", "verify"), Action.AUDIT_READ)

    def get_queryset(self) -> QuerySet[AuditRecord]:
        queryset = AuditRecord.objects.all()
        wanted = self.request.query_params.get("action")
        return queryset.filter(action=wanted) if wanted else queryset

    @action(detail=False, methods=["get"])
    def verify(self, request: Request) -> Response:
        result = verify_chain()
        return Response(
            {
                "ok": result.ok,
                "checked": result.checked,
                "first_broken_id": result.first_broken_id,
                "reason": result.reason,
            }
        )
