"""Reads of secrets: metadata only (the ciphertext stays in the model, never in a response)."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet

from accounts.models import Role
from accounts.roles import role_of
from vault.models import Secret

_REF = re.compile(r"^[A-Za-z0-9_]{1,128}$")


def all_secrets() -> QuerySet[Secret]:
    return Secret.objects.select_related("created_by", "updated_by").prefetch_related("allowed_users")


def find_secret(ref: str) -> Secret | None:
    """A secret by id or by name (a name never starts with a digit, so the two cannot clash)."""
    if not _REF.match(ref):
        return None  # nothing by that name can exist (and NUL would upset Postgres)
    queryset = all_secrets()
    if ref.isdigit():
        return queryset.filter(pk=int(ref)).first() if len(ref) < 19 else None
    return queryset.filter(name=ref).first()


def usable_secret_names(user: Any) -> list[str]:
    """Names of the secrets `user` may give its runs (what the launch form offers); the same rule
    as `vault.services.may_use`, over every secret in two queries."""
    role = role_of(user)
    if role is None:
        return []
    names: list[str] = []
    for secret in Secret.objects.order_by("name").prefetch_related("allowed_users"):
        allowed = {member.pk for member in secret.allowed_users.all()}
        if role == Role.ADMIN or role.value in secret.allowed_roles or user.pk in allowed:
            names.append(secret.name)
    return names
