"""`accounts.policy` for plain Django views that DRF does not wrap (streamed downloads, log text).

Same credentials as the API: `Authorization: Bearer <token>` first, else the session cookie.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse

from accounts.authentication import bearer_from_header
from accounts.policy import Action, Decision, Principal, decide, principal_for, record_denial
from accounts.signins import record_token_refused
from accounts.tokens import access_token


def http_principal(request: HttpRequest) -> Principal:
    plaintext = bearer_from_header(request.headers.get("Authorization"))
    if plaintext is not None:
        token = access_token(plaintext)
        if token is None:
            record_token_refused(plaintext)
        return principal_for(token.user if token is not None else None, token)
    return principal_for(request.user)


def refusal(principal: Principal, action: Action, target: Any = None) -> JsonResponse | None:
    """None when `principal` may act; else the JSON 401/403 answer (a 403 is audited)."""
    decision: Decision = decide(principal, action, row=target)
    if decision.allowed:
        return None
    response = JsonResponse({"detail": decision.reason}, status=decision.status)
    if decision.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    else:
        record_denial(principal, action, decision, target)
    return response
