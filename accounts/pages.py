"""`accounts.policy` for the dashboard's pages: sign-in redirects, 403 pages, what to show."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.views import redirect_to_login
from django.db.models import Model
from django.http import HttpRequest, HttpResponse

from accounts.policy import Action, Principal, can, decide, principal_for, record_denial
from ops.errors import ExplainedDenial

View = TypeVar("View", bound=Callable[..., HttpResponse])


class PolicyDenied(ExplainedDenial):
    """A page refused by the policy; its message (the policy's reason) is shown on the 403 page."""


def page_principal(request: HttpRequest) -> Principal:
    cached = getattr(request, "_principal", None)
    if cached is None:
        # No `user` when the request failed before the auth middleware (a bad Host header).
        cached = principal_for(getattr(request, "user", None))
        request._principal = cached  # type: ignore[attr-defined]
    return cached


def requires(action: Action) -> Callable[[View], View]:
    """A page for callers allowed `action`: anonymous callers sign in first, others get a 403."""

    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            principal = page_principal(request)
            decision = decide(principal, action)
            if decision.status == 401:
                return redirect_to_login(request.get_full_path())
            if not decision.allowed:
                record_denial(principal, action, decision)
                raise PolicyDenied(decision.reason)
            return view(request, *args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate


def check_row(request: HttpRequest, action: Action, row: Model) -> None:
    """For a page acting on one row the caller may see: a 403 page (audited) when it may not act."""
    principal = page_principal(request)
    decision = decide(principal, action, row)
    if not decision.allowed:
        record_denial(principal, action, decision, row)
        raise PolicyDenied(decision.reason)


def permissions(request: HttpRequest) -> dict[str, Any]:
    """Template context: what the signed-in user may do, so pages offer nothing the server refuses."""
    principal = page_principal(request)
    return {
        "principal": principal,
        "may": {
            "launch": can(principal, Action.RUN_LAUNCH),
            "manage_users": can(principal, Action.USER_MANAGE),
            "manage_secrets": can(principal, Action.SECRET_MANAGE),
            "read_audit": can(principal, Action.AUDIT_READ),
            "manage_dead_letters": can(principal, Action.DEAD_LETTER_MANAGE),
            "manage_tokens": can(principal, Action.TOKEN_MANAGE),
            "read_fleet": can(principal, Action.FLEET_READ),
            "manage_programs": can(principal, Action.PROGRAM_MANAGE),
        },
    }
