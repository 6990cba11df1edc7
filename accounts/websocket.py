"""Websocket authentication: a bearer token on the handshake, else the session cookie.

Cookie-authenticated handshakes must come from an allowed origin (a page of ours): otherwise any
site a signed-in user visits could open a socket with their cookie. Token handshakes carry their
credential explicitly and need no origin check.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import validate_host

from accounts.authentication import bearer_from_header
from accounts.signins import record_token_refused
from accounts.tokens import access_token

Scope = dict[str, Any]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def origin_allowed(origin: str | None) -> bool:
    if origin is None:
        return True  # not a browser: browsers always send Origin on websocket handshakes
    host = urlsplit(origin).hostname
    return host is not None and validate_host(host, settings.ALLOWED_HOSTS)


@database_sync_to_async  # type: ignore[untyped-decorator]
def _token_and_user(plaintext: str) -> tuple[Any, Any]:
    token = access_token(plaintext)
    if token is None:
        record_token_refused(plaintext)
    return (token, token.user) if token is not None else (None, AnonymousUser())


class TokenOrSessionAuthMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.session_app = AuthMiddlewareStack(app)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        plaintext = bearer_from_header(_header(scope, b"authorization"))
        if plaintext is not None:
            token, user = await _token_and_user(plaintext)
            scope = {**scope, "user": user, "token": token, "auth": "token"}
            return await self.app(scope, receive, send)
        if not origin_allowed(_header(scope, b"origin")):
            scope = {**scope, "user": AnonymousUser(), "auth": "refused_origin"}
            return await self.app(scope, receive, send)
        return await self.session_app({**scope, "auth": "session"}, receive, send)
