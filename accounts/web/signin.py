"""The sign-in form: Django's LoginView behind a per-address rate limit on POST.

A refused POST gets 429 with `Retry-After` and the sign-in page saying when to try again; it never
reaches `authenticate`, so it leaves no django-axes attempt and no audit record (that is the
point: a loop against a locked username cannot flood the append-only audit table).
"""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse

from accounts.throttles import SignInFormThrottle

STATUS = 429


def throttled_message(seconds: int) -> str:
    unit = "second" if seconds == 1 else "seconds"
    return f"Too many sign-in attempts from your address. Try again in {seconds} {unit}."


class SignInView(LoginView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        throttle = SignInFormThrottle()
        if throttle.allow_request(request, self):  # type: ignore[arg-type]
            return super().post(request, *args, **kwargs)
        seconds = max(1, math.ceil(throttle.wait() or 1))
        context = self.get_context_data(
            form=self.get_form_class()(request), throttled=throttled_message(seconds)
        )
        response = self.render_to_response(context, status=STATUS)
        response["Retry-After"] = str(seconds)
        return response
