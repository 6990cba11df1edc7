"""Every API error is JSON with a 4xx status; never an HTML page or a trace."""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError
from rest_framework import status
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ops.inputs import InvalidInput
from ops.middleware import note_database_error


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OperationalError | InterfaceError):
        request = getattr(context.get("request"), "_request", None)
        if request is not None:
            note_database_error(request, exc)  # the middleware may repeat the request once
        return Response(
            {"detail": "The database is unavailable; try again shortly.", "code": "database_unavailable"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, InvalidInput):  # raised below the serializers (ids, cursors): name the field
        return Response({exc.field: [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if isinstance(exc, Throttled) and response is not None:
        # DRF already sets Retry-After; the code lets clients tell a rate limit from other 429s.
        response.data = {"detail": str(exc.detail), "code": "throttled"}
    return response


def object_body(data: Any, known: set[str]) -> dict[str, Any]:
    """A request's JSON body as an object with only `known` fields, else a 400 naming them."""
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["the body must be a JSON object"]})
    unknown = sorted(str(name)[:64] for name in set(data) - known)
    if unknown:
        raise ValidationError({name: ["unknown field"] for name in unknown[:10]})
    return data
