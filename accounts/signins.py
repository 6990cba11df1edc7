"""Sign-ins, failed sign-ins, sign-outs and refused tokens, as audit records.

The sign-in form (and Django's admin) goes through `django.contrib.auth.login`/`authenticate`,
whose signals land here; `POST /api/v1/auth/token/` fails through the same `authenticate` signal
and reports its successes and malformed requests itself. A failure records the username tried
(truncated), never the password: Django masks it in the signal's credentials before we see them.

Refused bearer tokens are recorded at most once a minute per client address, reason and token
prefix: authentication runs before any throttle, so an unbounded loop of bad tokens must not
turn into an unbounded stream of append-only rows. Failed sign-ins are collapsed the same way but
counted (`audit.repeats`): the first failure per username, method, reason and address in a minute
is recorded in full, the rest only counted, and one summary record carries the `count`.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest

from audit import chain
from audit.context import current
from audit.repeats import record_repeated

MAX_USERNAME = 150
TOKEN_API_PATH = "/api/v1/auth/token/"  # noqa: S105 - a path, not a password
_REFUSAL_WINDOW_SECONDS = 60
FAILURE_WINDOW_SECONDS = 60


def _method(request: HttpRequest | None) -> str:
    return "token" if request is not None and request.path == TOKEN_API_PATH else "password"


def attempted_username(value: Any) -> str:
    return value[:MAX_USERNAME] if isinstance(value, str) else ""


@receiver(user_logged_in, dispatch_uid="accounts.signins.signed_in")
def _signed_in(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    chain.record("auth.sign_in", actor=user, target=user, details={"method": _method(request)})


@receiver(user_login_failed, dispatch_uid="accounts.signins.sign_in_failed")
def _sign_in_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    # django-axes' receiver runs first (its app is listed before ours) and flags a lockout.
    locked_out = bool(getattr(request, "axes_locked_out", False))
    record_sign_in_failed(
        credentials.get("username"), method=_method(request), reason="locked_out" if locked_out else "invalid"
    )


@receiver(user_logged_out, dispatch_uid="accounts.signins.signed_out")
def _signed_out(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    if user is not None and user.is_authenticated:
        chain.record("auth.sign_out", actor=user, target=user)


def record_sign_in_failed(username: Any, *, method: str, reason: str) -> None:
    """`reason`: `invalid` (unknown user or wrong password, not told apart), `locked_out`, `malformed`.

    Repeats within FAILURE_WINDOW_SECONDS from the same address become one summary record."""
    name = attempted_username(username)
    record_repeated(
        "auth.sign_in_failed",
        key=(name, method, reason, current().ip),
        details={"username": name, "method": method, "reason": reason},
        outcome="failure",
        window=FAILURE_WINDOW_SECONDS,
    )


def record_token_sign_in(user: Any, token_prefix: str) -> None:
    chain.record(
        "auth.sign_in", actor=user, target=user, details={"method": "token", "token_prefix": token_prefix}
    )


def token_refusal(plaintext: str | None) -> tuple[str, str]:
    """(reason, prefix) for a bearer token that was refused: why, as far as we can tell."""
    from accounts.models import ApiToken
    from accounts.tokens import MAX_TOKEN_LENGTH, TOKEN_PREFIX, _digest

    if not plaintext or len(plaintext) > MAX_TOKEN_LENGTH or not plaintext.startswith(TOKEN_PREFIX):
        return "malformed", ""
    token = ApiToken.objects.select_related("user").filter(digest=_digest(plaintext)).first()
    if token is None:
        return "unknown", ""
    if token.revoked_at is not None:
        return "revoked", token.prefix
    if not token.user.is_active:
        return "user_deactivated", token.prefix
    return "expired", token.prefix


def record_token_refused(plaintext: str | None) -> None:
    """Audit a refused bearer token (malformed, unknown, expired, revoked, or its user deactivated)."""
    reason, prefix = token_refusal(plaintext)
    key = f"audit:token_refused:{current().ip}:{reason}:{prefix}"
    try:
        first = cache.add(key, 1, _REFUSAL_WINDOW_SECONDS)
    except Exception:  # the cache is down: record every refusal rather than none
        first = True
    if not first:
        return  # recorded within the last minute already
    chain.record(
        "auth.token_refused", actor=None, outcome="denied", details={"reason": reason, "prefix": prefix}
    )
