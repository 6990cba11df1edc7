"""The request id that follows a launch from the HTTP request to the training process."""

from __future__ import annotations

import re
import uuid

import structlog

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def clean_request_id(candidate: str | None) -> str:
    """Keep a caller's id when it is short and printable; otherwise make a new one.

    A malformed id (too long, control characters) is replaced, never echoed, so it cannot be used
    to inject lines into logs or headers.
    """
    if candidate and _VALID.match(candidate):
        return candidate
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None
