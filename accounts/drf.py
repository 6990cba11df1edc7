"""The REST side of `accounts.policy`: the default permission class of every API view.

A view names the action each handler performs in `policy_actions`, keyed by the viewset action
(`list`, `create`, `cancel`, …) or, for plain API views, the lower-case HTTP method. A handler
without an entry is refused (deny by default), so a new endpoint cannot slip in unguarded.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotAuthenticated, PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.models import ApiToken
from accounts.policy import Action, Decision, Principal, decide, principal_for, record_denial


def request_principal(request: Request) -> Principal:
    cached = getattr(request, "_principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = request.auth if isinstance(request.auth, ApiToken) else None
    principal = principal_for(request.user, token)
    request._principal = principal  # type: ignore[attr-defined]
    return principal


def view_action(request: Request, view: Any) -> Action | None:
    actions: dict[str, Action] = getattr(view, "policy_actions", {})
    key = getattr(view, "action", None) or request.method.lower()  # type: ignore[union-attr]
    return actions.get(key)


def _refuse(request: Request, action: Action | str, decision: Decision, target: Any = None) -> None:
    if decision.status == 401:
        raise NotAuthenticated(decision.reason)
    record_denial(request_principal(request), action, decision, target)
    raise PermissionDenied(decision.reason)


def require(request: Request, action: Action) -> None:
    """Refuse (401/403, audited like any refusal) unless the caller may do `action`: for a rule
    that depends on the request's body (a launch of a code snapshot also needs `RUN_CODE`)."""
    decision = decide(request_principal(request), action)
    if not decision.allowed:
        _refuse(request, action, decision)


class PolicyPermission(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        action = view_action(request, view)
        principal = request_principal(request)
        if action is None:
            if not principal.is_authenticated:
                raise NotAuthenticated()
            _refuse(request, f"{type(view).__name__}.{request.method}", Decision(False, 403, "Not allowed."))
            return False
        decision = decide(principal, action)
        if not decision.allowed:
            _refuse(request, action, decision)
        return True

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        action = view_action(request, view)
        if action is None:
            return False
        decision = decide(request_principal(request), action, row=obj)
        if not decision.allowed:
            _refuse(request, action, decision, target=obj)
        return True
