"""Who is asking, from where: set once per request by the middleware, read by `audit.record`."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse

from ops.forwarded import PEER_KEY


@dataclass(frozen=True)
class RequestContext:
    ip: str = ""
    user_agent: str = ""
    request_id: str = ""


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "audit_request",
    default=RequestContext(),  # noqa: B039 - a frozen dataclass, never mutated
)


def current() -> RequestContext:
    return _current.get()


@contextmanager
def use_context(context: RequestContext) -> Iterator[None]:
    """For work done on a request's behalf later (a task): records carry that request's context."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def audit_address(request: HttpRequest) -> str:
    """The TCP peer, which no client can forge; behind a trusted proxy also the client it
    forwarded for ("client via peer"), since only then is that claim believed (ops.forwarded)."""
    peer = str(request.META.get(PEER_KEY) or request.META.get("REMOTE_ADDR", ""))
    client = str(request.META.get("REMOTE_ADDR", ""))
    if client == peer:
        return peer[:64]
    both = f"{client} via {peer}"
    return both if len(both) <= 64 else peer[:64]  # two long IPv6 addresses: the peer wins


class AuditContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _current.set(
            RequestContext(
                ip=audit_address(request),
                user_agent=request.headers.get("User-Agent", "")[:300],
                request_id=str(getattr(request, "request_id", ""))[:64],
            )
        )
        try:
            return self.get_response(request)
        finally:
            _current.reset(token)
