"""The answer while django-axes has locked a username out on a client address.

One answer for every case (an unknown user, a wrong password, even the right password while
locked): 429 with `Retry-After` and the same message, JSON under /api/, the sign-in page
otherwise. Nothing in it tells whether the username exists.
"""

from __future__ import annotations

from typing import Any

from axes.helpers import get_cool_off  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

STATUS = 429


def lockout_message(minutes: int) -> str:
    return f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


def lockout_response(request: HttpRequest, *_: Any, **__: Any) -> HttpResponse:
    # axes calls this with (request, response, credentials) or, on its async path, (request,
    # credentials): neither is needed here.
    cool_off = get_cool_off(request)
    seconds = max(1, int(cool_off.total_seconds())) if cool_off is not None else 3600
    message = lockout_message(max(1, round(seconds / 60)))
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": message, "code": "locked_out"}, status=STATUS)
    else:
        response = render(request, "registration/locked_out.html", {"message": message}, status=STATUS)
    response["Retry-After"] = str(seconds)
    return response
