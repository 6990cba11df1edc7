"""Accounts API: sign-in for a token, one's own tokens, users (admins), and who am I."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import signins, tokens, users
from accounts.api.serializers import (
    IssuedTokenSerializer,
    PasswordSerializer,
    TokenCreateSerializer,
    TokenSerializer,
    UserCreateSerializer,
    UserSerializer,
    UserUpdateSerializer,
)
from accounts.drf import PolicyPermission, request_principal
from accounts.models import ApiToken
from accounts.policy import Action, restrict
from accounts.throttles import AnonymousThrottle, TokenRequestThrottle
from ops.pagination import SafeCursorPagination

MAX_CREDENTIAL_LENGTH = 256


def _body(request: Request) -> dict[str, Any]:
    body: Any = request.data
    if not isinstance(body, dict):
        raise ValidationError({"non_field_errors": ["the body must be a JSON object"]})
    return body


def _refuse_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValidationError({name[:64]: ["unknown field"] for name in unknown[:10]})


def _issued(issued: tokens.IssuedToken) -> dict[str, Any]:
    data = dict(TokenSerializer(issued.token).data)
    data["token"] = issued.plaintext
    return data


class TokenView(APIView):
    """Exchange a username and password for a bearer token (shown once, stored hashed).

    Optional `scopes` (default: all the user's role allows), `expires_in_days` and `name`.
    """

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    throttle_classes = [AnonymousThrottle, TokenRequestThrottle]

    @extend_schema(
        request=inline_serializer(
            "TokenRequest",
            {
                "username": serializers.CharField(),
                "password": serializers.CharField(),
                "scopes": serializers.ListField(child=serializers.CharField(), required=False),
                "expires_in_days": serializers.IntegerField(required=False),
                "name": serializers.CharField(required=False),
            },
        ),
        responses={200: IssuedTokenSerializer},
    )
    def post(self, request: Request) -> Response:
        body = _body(request)
        _refuse_unknown(body, {"username", "password", "scopes", "expires_in_days", "name"})
        errors: dict[str, list[str]] = {}
        for field in ("username", "password"):
            value = body.get(field)
            if not isinstance(value, str) or not value:
                errors[field] = ["a non-empty string is required"]
            elif len(value) > MAX_CREDENTIAL_LENGTH:
                errors[field] = [f"must be at most {MAX_CREDENTIAL_LENGTH} characters"]
        if errors:
            signins.record_sign_in_failed(body.get("username"), method="token", reason="malformed")
            return Response(errors, status=status.HTTP_400_BAD_REQUEST)
        user = authenticate(request._request, username=body["username"], password=body["password"])
        if not isinstance(user, User):
            return Response(
                {"detail": "Invalid username or password.", "code": "invalid_credentials"},
                status=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="api"'},
            )
        try:
            scopes, ttl, name = tokens.check_token_request(
                user,
                scopes=body.get("scopes"),
                ttl_days=body.get("expires_in_days"),
                name=body.get("name", "api"),
            )
        except tokens.TokenError as error:
            tokens.record_refused_request(user, error)
            raise ValidationError({field: [message] for field, message in error.errors.items()}) from None
        issued = tokens.do_issue_token(user, name=name, ttl=ttl, scopes=scopes)
        signins.record_token_sign_in(user, issued.token.prefix)
        return Response(_issued(issued))


class WhoAmIView(APIView):
    """`GET /api/v1/auth/whoami/`: the caller's user, role and the scopes this request carries."""

    policy_actions = {"get": Action.ACCOUNT_READ}

    @extend_schema(
        responses={
            200: inline_serializer(
                "WhoAmI",
                {
                    "id": serializers.IntegerField(),
                    "username": serializers.CharField(),
                    "role": serializers.CharField(),
                    "scopes": serializers.ListField(child=serializers.CharField()),
                    "via_token": serializers.BooleanField(),
                },
            )
        }
    )
    def get(self, request: Request) -> Response:
        principal = request_principal(request)
        return Response(
            {
                "id": principal.user.pk,
                "username": principal.user.get_username(),
                "role": principal.role,
                "scopes": sorted(principal.scopes),
                "via_token": principal.token is not None,
            }
        )


class IdCursorPagination(SafeCursorPagination):
    # ops.pagination: a made-up cursor is a 400 naming `cursor`, never a 404 or a 500.
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class TokenViewSet(viewsets.GenericViewSet[ApiToken]):
    """The caller's API tokens; admins see and revoke everyone's (`?user=<username>` filters)."""

    serializer_class = TokenSerializer
    pagination_class = IdCursorPagination
    lookup_value_regex = "[0-9]+"
    policy_actions = {
        "list": Action.TOKEN_READ,
        "create": Action.TOKEN_MANAGE,
        "destroy": Action.TOKEN_MANAGE,
    }

    def get_queryset(self) -> QuerySet[ApiToken]:
        # The tokens the caller may see; revoking one of them is checked on the row (a 403).
        principal = request_principal(self.request)
        queryset = restrict(principal, Action.TOKEN_READ, ApiToken.objects.select_related("user"))
        wanted = self.request.query_params.get("user")
        return queryset.filter(user__username=wanted[:150]) if wanted else queryset

    @extend_schema(parameters=[OpenApiParameter("user", str, description="admins: one user's tokens")])
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(TokenSerializer(page, many=True).data)

    @extend_schema(request=TokenCreateSerializer, responses={201: IssuedTokenSerializer})
    def create(self, request: Request) -> Response:
        body = _body(request)
        _refuse_unknown(body, {"name", "scopes", "expires_in_days"})
        principal = request_principal(request)
        try:
            scopes, ttl, name = tokens.check_token_request(
                principal.user,
                scopes=body.get("scopes"),
                ttl_days=body.get("expires_in_days"),
                name=body.get("name", ""),
                caller_scopes=principal.scopes if principal.token is not None else None,
            )
        except tokens.TokenError as error:
            tokens.record_refused_request(principal.user, error, principal.token)
            raise ValidationError({field: [message] for field, message in error.errors.items()}) from None
        issued = tokens.do_issue_token(principal.user, name=name, ttl=ttl, scopes=scopes)
        return Response(_issued(issued), status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: TokenSerializer})
    def destroy(self, request: Request, pk: str) -> Response:
        principal = request_principal(request)
        token = restrict(principal, Action.TOKEN_READ, ApiToken.objects.all()).filter(pk=int(pk)).first()
        if token is None:
            raise Http404("No such token.")
        self.check_object_permissions(request, token)  # seen but not one's to revoke: 403, audited
        token = tokens.do_revoke_token(principal.user, token)
        return Response(TokenSerializer(token).data)


class UserViewSet(viewsets.GenericViewSet[User]):
    """Users and their roles (admins only). Deactivating a user ends its sessions and tokens."""

    serializer_class = UserSerializer
    pagination_class = IdCursorPagination
    lookup_value_regex = "[0-9]+"
    policy_actions = dict.fromkeys(
        ("list", "retrieve", "create", "partial_update", "password"), Action.USER_MANAGE
    )

    def get_queryset(self) -> QuerySet[User]:
        users = User.objects.select_related("role_record")
        return restrict(request_principal(self.request), Action.USER_MANAGE, users)

    def _user(self, pk: str) -> User:
        user = self.get_queryset().filter(pk=int(pk)).first()
        if user is None:
            raise Http404("No such user.")
        return user

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(UserSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(UserSerializer(self._user(pk)).data)

    @extend_schema(request=UserCreateSerializer, responses={201: UserSerializer})
    def create(self, request: Request) -> Response:
        body = _body(request)
        _refuse_unknown(body, {"username", "password", "role", "email"})
        with _field_errors():
            user = users.do_create_user(
                request_principal(request).user,
                username=body.get("username"),
                password=body.get("password"),
                role=body.get("role"),
                email=body.get("email", ""),
            )
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=UserUpdateSerializer, responses={200: UserSerializer})
    def partial_update(self, request: Request, pk: str) -> Response:
        body = _body(request)
        _refuse_unknown(body, {"role", "is_active"})
        user = self._user(pk)
        actor = request_principal(request).user
        with _field_errors():
            if "role" in body:
                users.do_set_role(actor, user, body["role"])
            if "is_active" in body:
                users.do_set_active(actor, user, body["is_active"])
        return Response(UserSerializer(self._user(pk)).data)

    @extend_schema(request=PasswordSerializer, responses={200: UserSerializer})
    @action(detail=True, methods=["post"])
    def password(self, request: Request, pk: str) -> Response:
        body = _body(request)
        _refuse_unknown(body, {"password"})
        user = self._user(pk)
        with _field_errors():
            users.do_reset_password(request_principal(request).user, user, body.get("password"))
        return Response(UserSerializer(user).data)


@contextmanager
def _field_errors() -> Iterator[None]:
    """Turns a service's `UserError` into a 400 naming the fields."""
    try:
        yield
    except users.UserError as error:
        raise ValidationError({field: [message] for field, message in error.errors.items()}) from None


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, for signed-in callers."""

    permission_classes = [PolicyPermission]  # drf-spectacular serves to anyone by default
    policy_actions = {"get": Action.ACCOUNT_READ}
