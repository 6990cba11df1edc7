"""Account pages: one's API tokens, and (admins) users and their roles.

Forms post to these views, which call the same services as the API (one set of rules and
messages); a new token's plaintext is rendered once in the POST's response and never again.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import tokens, users
from accounts.models import ApiToken, Role
from accounts.pages import check_row, page_principal, requires
from accounts.policy import Action, reaches_every_row, restrict
from accounts.roles import ROLE_SCOPES, SCOPES

EXPIRY_CHOICES = (7, 30, 90, 365)


def _tokens_page(
    request: HttpRequest,
    *,
    issued: tokens.IssuedToken | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    principal = page_principal(request)
    queryset = restrict(principal, Action.TOKEN_READ, ApiToken.objects.select_related("user")).order_by("-id")
    everyone = request.GET.get("all") == "1" and reaches_every_row(principal, Action.TOKEN_READ)
    if not everyone:
        queryset = queryset.filter(user_id=principal.user.pk)
    response = render(
        request,
        "accounts/tokens.html",
        {
            "tokens": list(queryset[:200]),
            "everyone": everyone,
            "grantable": [scope for scope in SCOPES if scope in principal.scopes],
            "expiry_choices": EXPIRY_CHOICES,
            "issued": issued,
            "errors": errors or {},
        },
        status=status,
    )
    if issued is not None:
        response["Cache-Control"] = "no-store"  # the plaintext must not sit in a cache
    return response


@require_http_methods(["GET", "POST"])
@requires(Action.TOKEN_MANAGE)
def token_list(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _tokens_page(request)
    principal = page_principal(request)
    days: Any = request.POST.get("expires_in_days", "")
    try:
        scopes, ttl, name = tokens.check_token_request(
            principal.user,
            scopes=request.POST.getlist("scopes"),
            ttl_days=None if days == "" else int(days) if days.isdigit() else days,
            name=request.POST.get("name", ""),
        )
    except tokens.TokenError as error:
        tokens.record_refused_request(principal.user, error)
        return _tokens_page(request, errors=error.errors)  # 200, like every form shown again
    issued = tokens.do_issue_token(principal.user, name=name, ttl=ttl, scopes=scopes)
    return _tokens_page(request, issued=issued, status=201)


@require_POST
@requires(Action.TOKEN_MANAGE)
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    principal = page_principal(request)
    token = restrict(principal, Action.TOKEN_READ, ApiToken.objects.all()).filter(pk=token_id).first()
    if token is None:
        raise Http404("No such token.")
    check_row(request, Action.TOKEN_MANAGE, token)  # seen but not one's to revoke: a 403 page
    tokens.do_revoke_token(principal.user, token)
    messages.success(request, f"Token {token.prefix}… is revoked.")
    return redirect("account-tokens")


# -- users (admins) -------------------------------------------------------------------------------


def _users_page(
    request: HttpRequest,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        "accounts/users.html",
        {
            "users": list(_users(request).order_by("username")[:500]),
            "roles": Role.choices,
            "errors": errors or {},
            "values": values or {"role": Role.VIEWER},
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
@requires(Action.USER_MANAGE)
def user_list(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _users_page(request)
    values = {key: request.POST.get(key, "") for key in ("username", "email", "role")}
    try:
        user = users.do_create_user(
            page_principal(request).user,
            username=values["username"],
            password=request.POST.get("password", ""),
            role=values["role"],
            email=values["email"],
        )
    except users.UserError as error:
        return _users_page(request, errors=error.errors, values=values)
    messages.success(request, f"User {user.username} is created as {values['role']}.")
    return redirect("user-detail", user_id=user.pk)


def _users(request: HttpRequest) -> QuerySet[User]:
    return restrict(page_principal(request), Action.USER_MANAGE, User.objects.select_related("role_record"))


def _user(request: HttpRequest, user_id: int) -> User:
    user = _users(request).filter(pk=user_id).first()
    if user is None:
        raise Http404("No such user.")
    return user


@require_GET
@requires(Action.USER_MANAGE)
def user_detail(request: HttpRequest, user_id: int) -> HttpResponse:
    return _user_page(request, _user(request, user_id))


def _user_page(
    request: HttpRequest, user: User, errors: dict[str, str] | None = None, status: int = 200
) -> HttpResponse:
    record = getattr(user, "role_record", None)
    return render(
        request,
        "accounts/user_detail.html",
        {
            "subject": user,
            "subject_role": record.role if record is not None else Role.VIEWER,
            "roles": Role.choices,
            "role_scopes": {role: sorted(scopes) for role, scopes in ROLE_SCOPES.items()},
            "tokens": list(
                restrict(
                    page_principal(request), Action.TOKEN_READ, ApiToken.objects.filter(user=user)
                ).order_by("-id")[:50]
            ),
            "errors": errors or {},
        },
        status=status,
    )


@require_POST
@requires(Action.USER_MANAGE)
def user_change(request: HttpRequest, user_id: int) -> HttpResponse:
    """One endpoint for the user page's forms: `change` is role, active or password."""
    user = _user(request, user_id)
    actor = page_principal(request).user
    change = request.POST.get("change", "")
    try:
        if change == "role":
            users.do_set_role(actor, user, request.POST.get("role", ""))
            messages.success(request, f"{user.username} is now {request.POST.get('role')}.")
        elif change == "active":
            active = request.POST.get("is_active") == "true"
            users.do_set_active(actor, user, active)
            messages.success(request, f"{user.username} is {'active' if active else 'deactivated'}.")
        elif change == "password":
            users.do_reset_password(actor, user, request.POST.get("password", ""))
            messages.success(request, f"{user.username}'s password is reset.")
        else:
            return _user_page(request, user, {"change": "unknown change"})
    except users.UserError as error:
        return _user_page(request, _user(request, user_id), error.errors)
    return redirect("user-detail", user_id=user.pk)
