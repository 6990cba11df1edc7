"""DRF rate limits: anonymous callers, signed-in callers, token requests (stricter), and the
sign-in form (`accounts.web.signin`, the same rate as token requests, counted apart).

Rates come from `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]` (the `CONTROLPLANE_THROTTLE_*`
variables), read when a throttle is built rather than when this module is imported, so a settings
override applies. Counters live in the default cache: Redis in production, so every web process
shares them. A refused request gets 429 with `Retry-After` (see `ops.api_errors`).
"""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle


class _LiveRate(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        rates: dict[str, Any] = dict(api_settings.DEFAULT_THROTTLE_RATES)
        rate = rates.get(str(self.scope))
        return str(rate) if rate else None


class AnonymousThrottle(_LiveRate, AnonRateThrottle):
    scope = "anon"


class SignedInThrottle(_LiveRate, UserRateThrottle):
    scope = "user"


class TokenRequestThrottle(_LiveRate):
    """Per client address, whoever asks: password guessing through the API is slowed down here,
    and django-axes locks the username on that address after repeated failures."""

    scope = "auth"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class SignInFormThrottle(TokenRequestThrottle):
    """POSTs to the sign-in form, per address, at `CONTROLPLANE_THROTTLE_AUTH`: a password loop
    through the form is refused before it reaches authentication, django-axes or the audit log."""

    cache_format = "throttle_signin_form_%(ident)s"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"ident": self.get_ident(request)}
