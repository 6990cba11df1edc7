"""`/api/v1/secrets/`: write-only secrets for admins. No response ever carries a value."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.drf import request_principal
from accounts.policy import Action
from ops.api_errors import object_body
from vault import crypto, selectors, services
from vault.models import Secret

CREATE_FIELDS = {"name", "value", "allowed_users", "allowed_roles"}
UPDATE_FIELDS = {"value", "allowed_users", "allowed_roles"}


def _not_configured() -> Response:
    # A deployment problem, not the caller's: 503, in the shape of the other service errors.
    return Response(
        {"detail": crypto.NOT_CONFIGURED, "code": "secrets_not_configured"},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


class SecretSerializer(serializers.ModelSerializer[Secret]):
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    updated_by = serializers.CharField(source="updated_by.username", read_only=True, allow_null=True)
    allowed_users = serializers.SerializerMethodField()
    allowed_roles = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Secret
        fields = [
            "id",
            "name",
            "allowed_users",
            "allowed_roles",
            "key_id",
            "created_at",
            "created_by",
            "updated_at",
            "updated_by",
            "last_used_at",
        ]
        read_only_fields = fields

    def get_allowed_users(self, secret: Secret) -> list[str]:
        return sorted(user.username for user in secret.allowed_users.all())


class SecretCreateSerializer(serializers.Serializer[Any]):
    """Documents the body for the OpenAPI schema; validation is in `vault.services`."""

    name = serializers.RegexField(r"^[A-Z_][A-Z0-9_]{0,127}$")
    value = serializers.CharField(write_only=True, min_length=8, max_length=services.MAX_VALUE_LENGTH)
    allowed_users = serializers.ListField(child=serializers.CharField(), required=False)
    allowed_roles = serializers.ListField(child=serializers.CharField(), required=False)


class SecretUpdateSerializer(serializers.Serializer[Any]):
    value = serializers.CharField(
        write_only=True, required=False, min_length=8, max_length=services.MAX_VALUE_LENGTH
    )
    allowed_users = serializers.ListField(child=serializers.CharField(), required=False)
    allowed_roles = serializers.ListField(child=serializers.CharField(), required=False)


def _invalid(error: services.SecretError) -> ValidationError:
    return ValidationError({field: [message] for field, message in error.errors.items()})


class SecretViewSet(viewsets.GenericViewSet[Secret]):
    serializer_class = SecretSerializer
    lookup_field = "name"
    lookup_value_regex = "[A-Za-z0-9_]{1,128}"
    pagination_class = None
    policy_actions = dict.fromkeys(
        ("list", "create", "retrieve", "partial_update", "destroy"), Action.SECRET_MANAGE
    )

    def get_queryset(self) -> QuerySet[Secret]:
        return selectors.managed_secrets(request_principal(self.request))

    def get_object(self) -> Secret:
        secret = selectors.find_secret(str(self.kwargs["name"]), self.get_queryset())
        if secret is None:
            raise Http404("No such secret.")
        self.check_object_permissions(self.request, secret)
        return secret

    def list(self, request: Request) -> Response:
        return Response(SecretSerializer(self.get_queryset(), many=True).data)

    @extend_schema(request=SecretCreateSerializer, responses={201: SecretSerializer})
    def create(self, request: Request) -> Response:
        body = object_body(request.data, CREATE_FIELDS)
        try:
            secret = services.do_create_secret(
                request.user,
                name=body.get("name"),
                value=body.get("value"),
                allowed_users=body.get("allowed_users"),
                allowed_roles=body.get("allowed_roles"),
            )
        except services.SecretError as error:
            raise _invalid(error) from None
        except crypto.NotConfigured:
            return _not_configured()
        return Response(
            SecretSerializer(selectors.find_secret(secret.name, self.get_queryset())).data,
            status=status.HTTP_201_CREATED,
        )

    def retrieve(self, request: Request, name: str) -> Response:
        return Response(SecretSerializer(self.get_object()).data)

    @extend_schema(request=SecretUpdateSerializer, responses={200: SecretSerializer})
    def partial_update(self, request: Request, name: str) -> Response:
        secret = self.get_object()
        body = object_body(request.data, UPDATE_FIELDS | {"name"})
        if "name" in body and body["name"] != secret.name:
            raise ValidationError({"name": ["cannot be changed; create a secret with the new name"]})
        changes = {field: body[field] for field in UPDATE_FIELDS if field in body}
        try:
            services.do_update_secret(request.user, secret, **changes)
        except services.SecretError as error:
            raise _invalid(error) from None
        except crypto.NotConfigured:
            return _not_configured()
        return Response(SecretSerializer(selectors.find_secret(secret.name, self.get_queryset())).data)

    def destroy(self, request: Request, name: str) -> Response:
        services.do_delete_secret(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
