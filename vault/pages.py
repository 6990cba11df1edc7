"""The secrets pages (`/secrets/`): list, create, change (the value is write-only), delete.

Forms post to the same services as the API, so one rule and one set of messages serve both.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from accounts.pages import page_principal, requires
from accounts.policy import Action
from accounts.roles import Role
from vault import crypto, selectors, services
from vault.models import Secret

MAX_USER_CHOICES = 500
# Admins may use every secret already; granting a role is for operators (viewers cannot launch).
ROLE_CHOICES = [(Role.OPERATOR.value, "Every operator")]


def _secret(request: HttpRequest, ref: str) -> Secret:
    secret = selectors.find_secret(ref, selectors.managed_secrets(page_principal(request)))
    if secret is None:
        raise Http404("No such secret.")
    return secret


def _form_context(
    *,
    secret: Secret | None,
    name: str,
    users: list[str],
    roles: list[str],
    errors: dict[str, str],
) -> dict[str, Any]:
    choices = list(
        get_user_model()
        .objects.filter(is_active=True)
        .order_by("username")
        .values_list("username", flat=True)[:MAX_USER_CHOICES]
    )
    return {
        "secret": secret,
        "name": name,
        "user_choices": [(username, username in users) for username in choices],
        "role_choices": [(value, label, value in roles) for value, label in ROLE_CHOICES],
        "errors": errors,
        "general_errors": [message for field, message in errors.items() if field == "__all__"],
        "error_count": len(errors),
        "configured": crypto.configured(),
    }


@require_GET
@requires(Action.SECRET_MANAGE)
def secret_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "vault/list.html",
        {
            "secrets": list(selectors.managed_secrets(page_principal(request))),
            "configured": crypto.configured(),
        },
    )


@require_http_methods(["GET", "POST"])
@requires(Action.SECRET_MANAGE)
def secret_create(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        context = _form_context(secret=None, name="", users=[], roles=[], errors={})
        return render(request, "vault/form.html", context)
    name = request.POST.get("name", "").strip()
    users = request.POST.getlist("allowed_users")
    roles = request.POST.getlist("allowed_roles")
    try:
        services.do_create_secret(
            request.user,
            name=name,
            value=request.POST.get("value", ""),
            allowed_users=users,
            allowed_roles=roles,
        )
    except (services.SecretError, crypto.NotConfigured) as error:
        errors = error.errors if isinstance(error, services.SecretError) else {"__all__": str(error)}
        status = 503 if isinstance(error, crypto.NotConfigured) else 200
        # The value is never sent back into the page: it must be typed again.
        context = _form_context(secret=None, name=name, users=users, roles=roles, errors=errors)
        return render(request, "vault/form.html", context, status=status)
    messages.success(request, f"Secret {name} created.")
    return redirect("secret-list")


@require_http_methods(["GET", "POST"])
@requires(Action.SECRET_MANAGE)
def secret_edit(request: HttpRequest, ref: str) -> HttpResponse:
    secret = _secret(request, ref)
    if request.method == "GET":
        users = [user.username for user in secret.allowed_users.all()]
        context = _form_context(
            secret=secret, name=secret.name, users=users, roles=list(secret.allowed_roles), errors={}
        )
        return render(request, "vault/form.html", context)
    users = request.POST.getlist("allowed_users")
    roles = request.POST.getlist("allowed_roles")
    changes: dict[str, Any] = {"allowed_users": users, "allowed_roles": roles}
    value = request.POST.get("value", "")
    if value:  # empty: keep the current value
        changes["value"] = value
    try:
        services.do_update_secret(request.user, secret, **changes)
    except (services.SecretError, crypto.NotConfigured) as error:
        errors = error.errors if isinstance(error, services.SecretError) else {"__all__": str(error)}
        status = 503 if isinstance(error, crypto.NotConfigured) else 200
        context = _form_context(secret=secret, name=secret.name, users=users, roles=roles, errors=errors)
        return render(request, "vault/form.html", context, status=status)
    messages.success(request, f"Secret {secret.name} saved.")
    return redirect("secret-list")


@require_http_methods(["GET", "POST"])
@requires(Action.SECRET_MANAGE)
def secret_delete(request: HttpRequest, ref: str) -> HttpResponse:
    secret = _secret(request, ref)
    if request.method == "GET":
        return render(request, "vault/delete.html", {"secret": secret})
    services.do_delete_secret(request.user, secret)
    messages.success(request, f"Secret {secret.name} deleted.")
    return redirect("secret-list")
