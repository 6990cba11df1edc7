from __future__ import annotations

from collections.abc import Callable

import structlog
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from ops.collectors import register_web_collectors
from ops.errors import invalid_input
from ops.inputs import InvalidInput, check_pairs, text_problem
from ops.metrics import HTTP_REQUESTS_REJECTED
from ops.metrics_access import refusal
from ops.request_id import clean_request_id, enter_request, leave_request

log = structlog.get_logger(__name__)
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


class RequestIdMiddleware:
    """Binds `request_id` for the whole request and returns it as `X-Request-ID`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = clean_request_id(request.headers.get("X-Request-ID"))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        request.request_id = request_id  # type: ignore[attr-defined]
        token = enter_request(request)  # so log lines can name the authenticated user
        try:
            response = self.get_response(request)
        finally:
            leave_request(token)
            structlog.contextvars.clear_contextvars()
        response["X-Request-ID"] = request_id
        return response


class MetricsAccessMiddleware:
    """`/metrics` only for the configured token and/or networks (see ops.metrics_access); the
    first allowed scrape registers the web-state collectors, so only the web process has them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info != "/metrics":  # what URL resolution matches, prefix or not
            return self.get_response(request)
        refused = refusal(
            remote_addr=str(request.META.get("REMOTE_ADDR", "")),
            authorization=request.headers.get("Authorization", ""),
            token=settings.METRICS_TOKEN,
            networks=settings.METRICS_ALLOWED_NETWORKS,
        )
        if refused == "metrics_network":
            HTTP_REQUESTS_REJECTED.labels(reason=refused).inc()
            return JsonResponse({"detail": "Metrics are not served to this network."}, status=403)
        if refused == "metrics_token":
            HTTP_REQUESTS_REJECTED.labels(reason=refused).inc()
            response = JsonResponse({"detail": "A valid metrics bearer token is required."}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        register_web_collectors()
        return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """Turns a lost database into a short 503 instead of a 500 with a trace."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, OperationalError | InterfaceError) or (
            isinstance(exception, DatabaseError) and "connection" in str(exception).lower()
        ):
            log.error(
                "database_unavailable", path=request.path, error=str(exception)[:200], exc_info=exception
            )
            HTTP_REQUESTS_REJECTED.labels(reason="database_unavailable").inc()
            response = JsonResponse(
                {"detail": "The database is unavailable; try again shortly.", "code": "database_unavailable"},
                status=503,
            )
            response["Retry-After"] = "5"
            return response
        return None


class InputGuardMiddleware:
    """Refuses NUL and unpaired surrogates in the path, query string and form fields, and turns
    an InvalidInput raised by a view (an id beyond bigint, say) into the same 400 naming the field,
    for every page and endpoint at once. JSON bodies are checked by ops.parsers.SafeJSONParser."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            problem = text_problem(request.path_info)
            if problem:
                raise InvalidInput("path", problem)
            check_pairs(list(request.GET.lists()))
            # Pages only: the API takes JSON alone (ops.parsers), and parsing a form here would
            # consume the body DRF reads.
            if request.method == "POST" and request.content_type in _FORMS and not _is_api(request):
                check_pairs(list(request.POST.lists()))
        except InvalidInput as error:
            return invalid_input(request, error.field, error.message)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, InvalidInput):
            return invalid_input(request, exception.field, exception.message)
        return None
