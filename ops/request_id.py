"""The request id that follows a launch from the HTTP request to the training process, and the
request-scoped context (the current request, for `user_id`) that log lines pick up."""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import MutableMapping
from typing import Any

import structlog
from django.http import HttpRequest
from django.utils.functional import empty

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$", re.ASCII)
_current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("controlplane_request", default=None)


def clean_request_id(candidate: str | None) -> str:
    """Keep a caller's id when it is short and printable ASCII; otherwise make a new one.

    A malformed id (too long, control characters, non-ASCII) is replaced, never echoed, so it
    cannot be used to inject lines into logs or headers.
    """
    if candidate and _VALID.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None


def enter_request(request: Any) -> contextvars.Token[Any]:
    return _current_request.set(request)


def leave_request(token: contextvars.Token[Any]) -> None:
    _current_request.reset(token)


def _resolved_user(request: Any) -> Any:
    """The request's user if authentication already ran; never runs it (that may query)."""
    user = vars(request).get("user")
    if user is None:
        return None
    wrapped = vars(user).get("_wrapped", user)  # Django's lazy user, or DRF's resolved one
    return None if wrapped is empty else wrapped


def add_request_context(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: `user_id` on lines logged while serving an authenticated request.

    DRF authenticates inside the view (a bearer token) and then sets the user on the Django
    request; a session user is resolved lazily. Reading the user lazily here covers both without
    a query of its own. Django logs 4xx responses (`django.request`) after the middleware has
    returned, with the request as an extra: that request gives the id, method and path instead
    of its repr.
    """
    request = event_dict.get("request")
    if isinstance(request, HttpRequest):
        del event_dict["request"]
        event_dict.setdefault("method", request.method)
        event_dict.setdefault("path", request.path)
        request_id = getattr(request, "request_id", None)  # set by RequestIdMiddleware
        if request_id:
            event_dict.setdefault("request_id", request_id)
    else:
        request = _current_request.get()
    if request is None or "user_id" in event_dict:
        return event_dict
    user = _resolved_user(request)
    if user is not None and getattr(user, "is_authenticated", False):
        event_dict["user_id"] = user.pk
    return event_dict
