"""Issuing and checking API tokens.

A token is `cp_<prefix>_<secret>`; 32 random bytes make a fast hash (sha256) safe to store, so
checking a token costs one indexed lookup and no key stretching.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken
from audit import chain as audit

TOKEN_PREFIX = "cp_"  # noqa: S105 - a public marker, not a secret
MAX_TOKEN_LENGTH = 200
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def do_issue_token(user: User, *, name: str = "", ttl: timedelta | None = None) -> IssuedToken:
    prefix = secrets.token_hex(4)
    plaintext = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    ttl = ttl or timedelta(days=settings.CONTROLPLANE["TOKEN_TTL_DAYS"])
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            digest=_digest(plaintext),
            scopes=["read", "launch"],
            expires_at=timezone.now() + ttl,
        )
        audit.record("token.issue", actor=user, target=token, details={"prefix": prefix, "name": name})
    return IssuedToken(token=token, plaintext=plaintext)


def access_token(plaintext: str) -> ApiToken | None:
    """The active token for a plaintext, with its user, or None."""
    if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > MAX_TOKEN_LENGTH:
        return None
    token = ApiToken.objects.select_related("user").filter(digest=_digest(plaintext)).first()
    now = timezone.now()
    if token is None or not token.is_active(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
        # Coarse last-used updates: one write a minute per token, not one per request.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
