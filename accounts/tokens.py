"""Issuing and checking API tokens.

A token is `cp_<prefix>_<secret>`; 32 random bytes make a fast hash (sha256) safe to store, so
checking a token costs one indexed lookup and no key stretching.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken
from accounts.roles import SCOPES, role_of, scopes_of_role
from audit import chain as audit
from ops.middleware import repeatable_writes

TOKEN_PREFIX = "cp_"  # noqa: S105 - a public marker, not a secret
MAX_TOKEN_LENGTH = 200
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class TokenError(Exception):
    """A refused token request, with messages by field."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


def check_token_request(
    user: User,
    *,
    scopes: Any = None,
    ttl_days: Any = None,
    name: Any = "",
    caller_scopes: frozenset[str] | None = None,
) -> tuple[list[str], timedelta, str]:
    """Validated (scopes, ttl, name). A token never carries more than its user's role grants, nor
    more than the token that asks for it (a `read` token cannot mint a `launch` one)."""
    errors: dict[str, str] = {}
    allowed = scopes_of_role(role_of(user))
    if caller_scopes is not None:
        allowed &= caller_scopes
    if scopes is None:
        wanted = sorted(allowed)
    elif not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        errors["scopes"] = f"a non-empty list of scopes from {', '.join(SCOPES)}"
        wanted = []
    else:
        unknown = sorted(set(scopes) - set(SCOPES))
        beyond = sorted(set(scopes) - allowed - set(unknown))
        if unknown:
            errors["scopes"] = f"unknown scope {unknown[0][:32]!r}; use {', '.join(SCOPES)}"
        elif beyond:
            errors["scopes"] = (
                f"'{beyond[0]}' is more than you may grant (yours: {', '.join(sorted(allowed))})"
            )
        wanted = sorted(set(scopes))
    max_days = settings.CONTROLPLANE["TOKEN_MAX_TTL_DAYS"]
    if ttl_days is None:
        days = settings.CONTROLPLANE["TOKEN_TTL_DAYS"]
    elif isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= max_days:
        errors["expires_in_days"] = f"an integer from 1 to {max_days}"
        days = 0
    else:
        days = ttl_days
    if not isinstance(name, str) or len(name) > 100:
        errors["name"] = "a string of at most 100 characters"
    if errors:
        raise TokenError(errors)
    return wanted, timedelta(days=days), str(name)


def record_refused_request(user: User, error: TokenError, token: ApiToken | None = None) -> None:
    """A token request beyond what its user (or the asking token) may grant is an escalation
    attempt: it is refused with a 400 and audited."""
    details: dict[str, Any] = {"errors": error.errors}
    if token is not None:
        details["token_prefix"] = token.prefix
    audit.record("token.issue", actor=user, outcome="denied", details=details)


def do_issue_token(
    user: User,
    *,
    name: str = "",
    ttl: timedelta | None = None,
    scopes: list[str] | None = None,
    actor: User | None = None,
    run_id: int | None = None,
) -> IssuedToken:
    """A new token; `run_id` makes it run-scoped (tracking mode: it may only report into that run,
    accounts.policy.run_scoped_decision)."""
    prefix = secrets.token_hex(4)
    plaintext = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    ttl = ttl or timedelta(days=settings.CONTROLPLANE["TOKEN_TTL_DAYS"])
    granted = sorted(scopes if scopes is not None else scopes_of_role(role_of(user)))
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            digest=_digest(plaintext),
            scopes=granted,
            expires_at=timezone.now() + ttl,
            run_id=run_id,
        )
        audit.record(
            "token.issue",
            actor=actor or user,
            target=token,
            details={
                "prefix": prefix,
                "name": name,
                "scopes": granted,
                "owner": user.get_username(),
                **({"run_id": run_id} if run_id is not None else {}),
            },
        )
    return IssuedToken(token=token, plaintext=plaintext)


def do_revoke_token(actor: User, token: ApiToken) -> ApiToken:
    """Revoked at once: the next request with it is refused. Revoking twice changes nothing."""
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        token.refresh_from_db()
        if updated:
            audit.record("token.revoke", actor=actor, target=token, details={"prefix": token.prefix})
    return token


def do_issue_run_token(user: User, run_id: int) -> IssuedToken:
    """The run-scoped token of an external run (tracking mode): it reports into that run only, and
    is revoked when the run ends (runs.tracking)."""
    return do_issue_token(user, name=f"run {run_id}", scopes=["report"], run_id=run_id)


def revoke_run_tokens(run_id: int) -> int:
    """Revoke the run-scoped tokens of a run that has ended (in the caller's transaction); how many."""
    tokens = ApiToken.objects.filter(run_id=run_id, revoked_at__isnull=True)
    prefixes = list(tokens.values_list("prefix", flat=True))
    revoked = tokens.update(revoked_at=timezone.now())
    for prefix in prefixes:
        audit.record(
            "token.revoke", actor=None, details={"prefix": prefix, "run_id": run_id, "reason": "run ended"}
        )
    return revoked


def access_token(plaintext: str) -> ApiToken | None:
    """The active token for a plaintext, with its user, or None."""
    if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > MAX_TOKEN_LENGTH:
        return None
    token = (
        ApiToken.objects.select_related("user", "user__role_record").filter(digest=_digest(plaintext)).first()
    )
    now = timezone.now()
    if token is None or not token.is_active(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
        # Coarse last-used updates: one write a minute per token, not one per request.
        with repeatable_writes():
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
