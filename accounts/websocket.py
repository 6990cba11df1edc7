"""Websocket authentication: a bearer token on the handshake, else the session cookie.

Cookie-authenticated handshakes must come from an allowed origin (a page of ours): otherwise any
site a signed-in user visits could open a socket with their cookie. Token handshakes carry their
credential explicitly and need no origin check.

An allowed origin matches in scheme, host and port (absent ports are the scheme's default: http
80, https 443) either an entry of `CSRF_TRUSTED_ORIGINS` (a `*.` host also matches subdomains, as
in Django's CSRF check) or this server as the handshake reached it: the scheme the client used
(`https` for a `wss` handshake, or a trusted proxy's `X-Forwarded-Proto`) and the `Host` header,
whose host must be in `ALLOWED_HOSTS`.

`current_principal` reads the handshake's credential again (the token row with its user and role,
or the session and its user): the consumer asks it every few seconds, so revoking a token,
deactivating a user or signing out closes an open socket as it refuses the next REST call.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, cast
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from accounts.authentication import bearer_from_header
from accounts.models import ApiToken
from accounts.policy import Principal, principal_for
from accounts.signins import record_token_refused
from accounts.tokens import access_token
from ops.forwarded import forwarded_scheme

Scope = dict[str, Any]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host (no brackets), port


def _origin(url: str) -> Origin | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _matches_trusted(origin: Origin, entry: str) -> bool:
    wildcard = "://*." in entry
    trusted = _origin(entry.replace("://*.", "://", 1) if wildcard else entry)
    if trusted is None:
        return False
    scheme, host, port = trusted
    same_host = is_same_domain(origin[1], f".{host}") if wildcard else origin[1] == host
    return origin[0] == scheme and origin[2] == port and same_host


def _own_origin(scope: Scope) -> Origin | None:
    """This server as the client reached it, or None when the Host is not one of ours."""
    host_header = _header(scope, b"host")
    if not host_header:
        return None
    host, port = split_domain_port(host_header)
    if not host or not validate_host(host, settings.ALLOWED_HOSTS):
        return None
    peer = str((scope.get("client") or ("", 0))[0])
    own = str(scope.get("scheme", "ws"))
    scheme = forwarded_scheme(peer, _header(scope, b"x-forwarded-proto"), own, settings.TRUSTED_PROXIES)
    return scheme, host.strip("[]"), int(port) if port else _DEFAULT_PORTS[scheme]


def origin_allowed(origin: str | None, scope: Scope) -> bool:
    if origin is None:
        return True  # not a browser: browsers always send Origin on websocket handshakes
    parts = _origin(origin)
    if parts is None:
        return False
    if any(_matches_trusted(parts, entry) for entry in settings.CSRF_TRUSTED_ORIGINS):
        return True
    return parts == _own_origin(scope)


class _SessionOnly:
    """What `django.contrib.auth.get_user` reads from a request: its session."""

    def __init__(self, session: Any) -> None:
        self.session = session


def current_principal(scope: Scope) -> Principal:
    """The handshake's caller as the database says now (sync: call it through
    `database_sync_to_async`). A revoked or expired token, a deactivated user, a session that was
    signed out or whose password changed: a principal without a role (401)."""
    if scope.get("auth") == "token" and scope.get("token") is not None:
        token = (
            ApiToken.objects.select_related("user", "user__role_record").filter(pk=scope["token"].pk).first()
        )
        if token is None or not token.is_active() or not token.user.is_active:
            return principal_for(None)
        return principal_for(token.user, token)
    session_key = getattr(scope.get("session"), "session_key", None)
    if scope.get("auth") == "session" and session_key:
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        return principal_for(get_user(cast(HttpRequest, _SessionOnly(store))))
    return principal_for(None)


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
        if not origin_allowed(_header(scope, b"origin"), scope):
            scope = {**scope, "user": AnonymousUser(), "auth": "refused_origin"}
            return await self.app(scope, receive, send)
        return await self.session_app({**scope, "auth": "session"}, receive, send)
