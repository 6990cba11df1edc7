from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ApiToken
from accounts.signins import record_token_refused
from accounts.tokens import access_token


def bearer_from_header(value: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` value, or None."""
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


class BearerTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, ApiToken] | None:
        header: Any = request.headers.get("Authorization")
        if header is None:
            return None
        plaintext = bearer_from_header(header)
        if plaintext is None:
            if str(header).lower().startswith("bearer"):
                record_token_refused(None)
                raise exceptions.AuthenticationFailed("Malformed bearer token.")
            return None
        token = access_token(plaintext)
        if token is None:
            record_token_refused(plaintext)
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
