"""The one exception the client raises, with a one-line message fit for `error: …`."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """A refusal, a connection failure or bad input; `status` is the HTTP status when there is one."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _field_messages(body: dict[str, Any]) -> str:
    parts = []
    for field, messages in body.items():
        text = "; ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
        parts.append(text if field in ("detail", "non_field_errors") else f"{field}: {text}")
    return "; ".join(parts)


def from_response(response: httpx.Response) -> ClientError:
    """The server's own words: a `detail`, or each bad field with its message."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        message = body["detail"]
    elif isinstance(body, dict) and body:
        message = _field_messages(body)
    else:
        message = response.reason_phrase or "request failed"
    if status == 401:
        message = f"not signed in or the token is no longer valid ({message}); run `cpctl login`"
    return ClientError(f"{message} (HTTP {status})", status=status, body=body)
