"""Which network addresses a worker may fetch from on a user's behalf (dataset sources).

A run's `dataset_url` is chosen by its launcher, but the fetch runs inside the worker's network,
next to the database, the metadata service (169.254.169.254) and other internal services. So only
globally routable unicast addresses are allowed, unless an admin lists a network in
`CONTROLPLANE_DATASET_ALLOWED_NETWORKS`. Every address a name resolves to is checked (one bad
answer refuses the whole name), and the caller connects to the address it checked, so a second,
different DNS answer (rebinding) is never used. Pure Python: the launch check (runs) and the
fetch (workers) share it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED = "refused: address not allowed"
MAX_URL_LENGTH = 2000
# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits; a NAT64 gateway would reach it.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Names that resolve to loopback by convention (RFC 6761), refused before any lookup.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class AddressRefused(Exception):
    """The target is not an allowed address. The message never names the address or port, so
    error texts cannot be used to map the internal network."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # IPv4-compatible (::a.b.c.d, deprecated but still parsed by some stacks).
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


def _is_public(address: Address) -> bool:
    # is_global already excludes private, loopback, link-local, CGNAT 100.64/10, documentation
    # and benchmark ranges; the explicit flags also cover multicast, which is_global does not.
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def address_allowed(address: Address, allowed: Iterable[Network] = ()) -> bool:
    """True for a public unicast address, or one inside an admin-allowed network."""
    networks = tuple(allowed)
    inner = _embedded_ipv4(address)
    candidates = [address] if inner is None else [address, inner]
    if any(candidate in network for candidate in candidates for network in networks):
        return True
    # A wrapped IPv4 address is judged as itself (the wrapper ranges count as non-global).
    return _is_public(address if inner is None else inner)


def literal_address(host: str) -> Address | None:
    """The address a URL's host names literally (brackets stripped), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def is_local_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def check_url(url: str, allowed: Iterable[Network] = ()) -> str | None:
    """Why `url` cannot be a fetch target, judged without any network traffic; None if it may be.

    Names are resolved and checked again at fetch time (`resolve_checked`); this catches what
    is certain at launch, so the launcher gets a 400 instead of a run that fails later.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in {"http", "https"}:
        return "must be an http(s) URL"
    host = parts.hostname
    if not host:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials before the host (use a presigned URL)"
    if port == 0:
        return "is not a valid URL"
    address = literal_address(host)
    if address is not None and not address_allowed(address, allowed):
        return REFUSED
    if address is None and is_local_name(host) and not _allows_loopback(allowed):
        return REFUSED
    return None


def _allows_loopback(allowed: Iterable[Network]) -> bool:
    return any(ipaddress.ip_address("127.0.0.1") in network for network in allowed)


def resolve_checked(host: str, port: int, allowed: Iterable[Network] = ()) -> str:
    """The address to connect to for `host`: every address it resolves to must be allowed.

    Raises AddressRefused (nothing was sent to the host) or OSError (the name did not resolve).
    """
    networks = tuple(allowed)
    if is_local_name(host) and not _allows_loopback(networks):
        raise AddressRefused
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses or not all(address_allowed(address, networks) for address in addresses):
        raise AddressRefused
    return str(addresses[0])
