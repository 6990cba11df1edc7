"""Error pages: JSON under /api/, a friendly HTML page elsewhere; never a trace."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


class ExplainedDenial(PermissionDenied):
    """A refusal whose message is our own sentence, safe to show on the 403 page (the policy's
    reasons subclass it: accounts.pages.PolicyDenied)."""


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return render(request, "errors/404.html", status=404)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"detail": "You do not have permission to perform this action."}, status=403)
    # The policy's reasons are our own sentences ("Your role (viewer) may not launch runs."), safe to show.
    reason = str(exception) if isinstance(exception, ExplainedDenial) else ""
    return render(request, "errors/403.html", {"reason": reason}, status=403)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"detail": "Bad request."}, status=400)
    return render(request, "errors/400.html", status=400)


def invalid_input(request: HttpRequest, field: str, problem: str) -> HttpResponse:
    """A 400 naming the field, as the API answers field errors, or a page that names it."""
    if _wants_json(request):
        return JsonResponse({field: [problem]}, status=400)
    return render(request, "errors/400.html", {"field": field, "problem": problem}, status=400)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(
            {"detail": "Internal error; it has been logged.", "code": "server_error"}, status=500
        )
    return render(request, "errors/500.html", status=500)
