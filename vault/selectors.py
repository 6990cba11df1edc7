"""Reads of secrets: metadata only (the ciphertext stays in the model, never in a response)."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet

from accounts.policy import Action, Principal, principal_for, restrict
from vault.models import Secret

_REF = re.compile(r"^[A-Za-z0-9_]{1,128}$")


def managed_secrets(principal: Principal) -> QuerySet[Secret]:
    """The secrets `principal` may manage (every one for an admin with the admin scope, else none)."""
    secrets = Secret.objects.select_related("created_by", "updated_by").prefetch_related("allowed_users")
    return restrict(principal, Action.SECRET_MANAGE, secrets)


def find_secret(ref: str, queryset: QuerySet[Secret]) -> Secret | None:
    """A secret of `queryset` by id or by name (a name never starts with a digit, so the two
    cannot clash)."""
    if not _REF.match(ref):
        return None  # nothing by that name can exist (and NUL would upset Postgres)
    if ref.isdigit():
        return queryset.filter(pk=int(ref)).first() if len(ref) < 19 else None
    return queryset.filter(name=ref).first()


def usable_secrets(user: Any) -> QuerySet[Secret]:
    """The secrets `user` may give its runs: `accounts.policy`'s row rule for `secret.use` (granted
    by name or by role; admins every one). The user's own rights, not a token's: a launch is
    already checked against the caller's token, and a worker claiming a run has none."""
    return restrict(principal_for(user), Action.SECRET_USE, Secret.objects.all())


def usable_secret_names(user: Any) -> list[str]:
    """What the launch form offers, in one query."""
    return list(usable_secrets(user).order_by("name").values_list("name", flat=True))
