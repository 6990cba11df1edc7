from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from rest_framework import serializers

from accounts.models import ApiToken
from accounts.roles import role_of


class UserSerializer(serializers.ModelSerializer[User]):
    role = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "username", "email", "role", "is_active", "date_joined", "last_login"]

    def get_role(self, user: User) -> str | None:
        if not user.is_active:
            record = getattr(user, "role_record", None)
            return record.role if record is not None else None
        role = role_of(user)
        return str(role) if role is not None else None


class UserCreateSerializer(serializers.Serializer[Any]):
    """For the schema only: the service validates (one set of rules for API and pages)."""

    username = serializers.CharField()
    password = serializers.CharField(write_only=True)
    role = serializers.ChoiceField(choices=["viewer", "operator", "admin"])
    email = serializers.EmailField(required=False)


class UserUpdateSerializer(serializers.Serializer[Any]):
    role = serializers.ChoiceField(choices=["viewer", "operator", "admin"], required=False)
    is_active = serializers.BooleanField(required=False)


class PasswordSerializer(serializers.Serializer[Any]):
    password = serializers.CharField(write_only=True)


class TokenSerializer(serializers.ModelSerializer[ApiToken]):
    user = serializers.CharField(source="user.username", read_only=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "user",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "active",
        ]

    def get_active(self, token: ApiToken) -> bool:
        return token.is_active()


class TokenCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(required=False, max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=["read", "launch", "admin"]), required=False
    )
    expires_in_days = serializers.IntegerField(required=False, min_value=1)


class IssuedTokenSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; only its hash is stored.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
