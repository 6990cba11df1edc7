from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.tokens import do_issue_token

MAX_CREDENTIAL_LENGTH = 256


class TokenView(APIView):
    """Exchange a username and password for a bearer token (shown once, stored hashed)."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        request=inline_serializer(
            "TokenRequest", {"username": serializers.CharField(), "password": serializers.CharField()}
        ),
        responses={
            200: inline_serializer(
                "TokenResponse", {"token": serializers.CharField(), "expires_at": serializers.DateTimeField()}
            )
        },
    )
    def post(self, request: Request) -> Response:
        body: Any = request.data
        errors: dict[str, list[str]] = {}
        for field in ("username", "password"):
            value = body.get(field) if isinstance(body, dict) else None
            if not isinstance(value, str) or not value:
                errors[field] = ["a non-empty string is required"]
            elif len(value) > MAX_CREDENTIAL_LENGTH:
                errors[field] = [f"must be at most {MAX_CREDENTIAL_LENGTH} characters"]
        if errors:
            return Response(errors, status=status.HTTP_400_BAD_REQUEST)
        user = authenticate(request._request, username=body["username"], password=body["password"])
        if user is None:
            return Response(
                {"detail": "Invalid username or password.", "code": "invalid_credentials"},
                status=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="api"'},
            )
        issued = do_issue_token(user, name="api")
        return Response(
            {"token": issued.plaintext, "expires_at": issued.token.expires_at, "prefix": issued.token.prefix}
        )
