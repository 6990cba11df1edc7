"""Who may scrape `/metrics`: a bearer token and/or a list of networks, both from configuration.

With neither configured the endpoint is open (standalone on a laptop); production sets
`CONTROLPLANE_METRICS_TOKEN` (Prometheus sends it as `Authorization: Bearer`) and/or
`CONTROLPLANE_METRICS_ALLOWED_NETWORKS` (the scrapers' CIDRs). When both are set, both must pass.
The client address is the connection's (`REMOTE_ADDR`), never a forwarded header a client could
write itself.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Refusal = Literal["metrics_token", "metrics_network"]


def _address_allowed(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.1.2.3 from a dual-stack socket is 10.1.2.3
    return any(ip.version == network.version and ip in network for network in networks)


def _token_matches(authorization: str, token: str) -> bool:
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def refusal(
    *, remote_addr: str, authorization: str, token: str, networks: tuple[Network, ...]
) -> Refusal | None:
    """Why a scrape is refused (None: allowed). The network is checked first: a scraper outside
    the allowed networks learns nothing about the token."""
    if networks and not _address_allowed(remote_addr, networks):
        return "metrics_network"
    if token and not _token_matches(authorization, token):
        return "metrics_token"
    return None
