"""The forwarded-header rule (ops.forwarded) and the websocket origin rule (accounts.websocket)."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.websocket import origin_allowed
from controlplane.env import parse_networks
from ops.forwarded import client_address, forwarded_scheme

PROXIES = parse_networks("X", ["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("192.0.2.1", "198.51.100.7", "192.0.2.1"),  # an untrusted peer's header is ignored
        ("10.0.0.5", "198.51.100.7", "198.51.100.7"),  # a trusted proxy vouches for its client
        ("10.0.0.5", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # what the client wrote is not believed
        ("10.0.0.5", "198.51.100.7, 10.0.0.9", "198.51.100.7"),  # two trusted proxies in a row
        ("10.0.0.5", "10.0.0.8, 10.0.0.9", "10.0.0.8"),  # all trusted: the farthest
        ("10.0.0.5", "junk, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.5", "198.51.100.7, junk", "10.0.0.5"),  # a garbled hop: nothing beyond it
        ("10.0.0.5", "[2001:db8::1]:4711", "2001:db8::1"),
        ("10.0.0.5", None, "10.0.0.5"),
    ],
)
def test_the_client_address(peer: str, header: str | None, client: str) -> None:
    assert client_address(peer, header, PROXIES) == client


def test_no_trusted_proxies_trusts_no_one() -> None:
    assert client_address("127.0.0.1", "198.51.100.7", ()) == "127.0.0.1"
    assert forwarded_scheme("127.0.0.1", "https", "ws", ()) == "http"
    assert forwarded_scheme("10.0.0.5", "https", "ws", PROXIES) == "https"
    assert forwarded_scheme("10.0.0.5", "gopher", "wss", PROXIES) == "https"


def _scope(
    host: str, scheme: str = "ws", peer: str = "192.0.2.1", proto: str | None = None
) -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if proto:
        headers.append((b"x-forwarded-proto", proto.encode()))
    return {"type": "websocket", "scheme": scheme, "client": (peer, 50000), "headers": headers}


@pytest.mark.parametrize(
    ("origin", "scope", "allowed"),
    [
        ("http://localhost:8000", _scope("localhost:8000"), True),
        ("http://evil:8000", _scope("localhost:8000"), False),
        ("https://localhost:9999", _scope("localhost:8000"), False),
        ("http://localhost:9999", _scope("localhost:8000"), False),  # wrong port
        ("https://localhost:8000", _scope("localhost:8000"), False),  # ws handshake, https page
        ("http://localhost", _scope("localhost:8000"), False),
        ("https://localhost", _scope("localhost", scheme="wss"), True),  # default ports
        ("https://localhost:443", _scope("localhost", scheme="wss"), True),
        ("http://evil:8000", _scope("evil:8000"), False),  # Host not in ALLOWED_HOSTS
        ("https://localhost", _scope("localhost", peer="10.0.0.5", proto="https"), True),  # trusted TLS proxy
        ("https://localhost", _scope("localhost", proto="https"), False),  # untrusted proxy header
        ("https://cp.example.com", _scope("internal:8000"), True),  # CSRF_TRUSTED_ORIGINS
        ("https://cp.example.com:8443", _scope("internal:8000"), False),
        ("http://cp.example.com", _scope("internal:8000"), False),
        ("https://a.apps.example.org", _scope("internal:8000"), True),  # *. entry
        ("https://apps.example.org.evil", _scope("internal:8000"), False),
        ("null", _scope("localhost:8000"), False),
        (None, _scope("localhost:8000"), True),  # not a browser
    ],
)
def test_the_websocket_origin_rule(
    settings: Any, origin: str | None, scope: dict[str, Any], allowed: bool
) -> None:
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://cp.example.com", "https://*.apps.example.org"]
    settings.TRUSTED_PROXIES = PROXIES
    assert origin_allowed(origin, scope) is allowed
