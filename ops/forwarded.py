"""Who the client is behind proxies: forwarded headers count only when a trusted proxy sent them.

`X-Forwarded-For` and `X-Forwarded-Proto` are plain request headers: anyone can send them. Trusting
them from any peer lets a client pick its own address, which escapes the sign-in lockout (keyed on
username + address) and the per-address throttles, and forges the audit's IP. So the TCP peer is
the client unless the peer is in `CONTROLPLANE_TRUSTED_PROXIES`; then the client is the nearest
address in `X-Forwarded-For` that is not itself a trusted proxy (read right to left: each proxy
appends the address it saw, so only the part written by trusted proxies is believable).

uvicorn runs with `--no-proxy-headers` (compose, Kubernetes, the standalone command): it must not
rewrite the peer itself, or the peer the audit records would already be the forwarded claim.
`TrustedProxyMiddleware` applies the rule to every HTTP request; the websocket handshake asks
`forwarded_scheme` for the origin check.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PEER_KEY = "CONTROLPLANE_PEER_ADDR"  # request.META: the TCP peer, kept for the audit


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: str, trusted: Iterable[Network]) -> bool:
    parsed = _address(address)
    return parsed is not None and any(parsed in network for network in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: Iterable[Network]) -> str:
    """The client's address: the peer, or (behind trusted proxies) what they say they saw."""
    networks = tuple(trusted)
    if not forwarded_for or not is_trusted(peer, networks):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")):
        parsed = _address(hop)
        if parsed is None:
            break  # a garbled hop: believe nothing further left of it
        client = str(parsed)
        if not any(parsed in network for network in networks):
            break  # the first address no trusted proxy vouches beyond
    return client


def forwarded_scheme(peer: str, proto: str | None, own: str, trusted: Iterable[Network]) -> str:
    """`http`/`https` as the client used it: a trusted proxy's `X-Forwarded-Proto`, else our own."""
    if proto is not None and is_trusted(peer, trusted):
        value = proto.split(",")[0].strip().lower()
        if value in ("http", "https"):
            return value
    return "https" if own in ("https", "wss") else "http"


class TrustedProxyMiddleware:
    """Sets `REMOTE_ADDR` to the client (what the lockout, the throttles and `/metrics`' network
    check read), keeps the peer under `PEER_KEY`, and drops forwarded headers from untrusted
    peers so nothing downstream (`SECURE_PROXY_SSL_HEADER` included) can believe them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        peer = str(meta.get("REMOTE_ADDR", ""))
        meta[PEER_KEY] = peer
        trusted = settings.TRUSTED_PROXIES
        if is_trusted(peer, trusted):
            meta["REMOTE_ADDR"] = client_address(peer, meta.get("HTTP_X_FORWARDED_FOR"), trusted)
        else:
            for header in ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST"):
                meta.pop(header, None)
        return self.get_response(request)


def request_client_ip(request: HttpRequest) -> str:
    """The client of a request, for django-axes (`AXES_CLIENT_IP_CALLABLE`): the same rule as the
    middleware, also for a request that has not been through it."""
    meta = request.META
    if PEER_KEY in meta:
        return str(meta.get("REMOTE_ADDR", ""))
    peer = str(meta.get("REMOTE_ADDR", ""))
    return client_address(peer, meta.get("HTTP_X_FORWARDED_FOR"), settings.TRUSTED_PROXIES)
