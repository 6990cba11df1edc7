"""HTTP(S) GETs pinned to an address checked by ops.netguard, for fetches a user chose.

urllib resolves the host itself when it connects, after any check we could make, so a DNS
answer that changes between the check and the connect (rebinding) would reach an internal
address. Here the connection goes to the very address that was checked, while the Host header
and TLS SNI/certificate check use the original name. Redirects are followed only through the
same check (a redirect to 169.254.169.254 is refused like a URL naming it), and proxies from the
environment are never used (they would resolve the name again).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

from ops.netguard import AddressRefused, Network, check_url, resolve_checked

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
USER_AGENT = "controlplane-dataset-stager"


class PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned, self.port), self.timeout)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.pinned = address

    def connect(self) -> None:
        raw = socket.create_connection((self.pinned, self.port), self.timeout)
        # SNI and the certificate's name check use the host from the URL, not the address.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def _connect(url: str, timeout: float, allowed: tuple[Network, ...]) -> http.client.HTTPConnection:
    if check_url(url, allowed) is not None:
        raise AddressRefused  # also a bad scheme on a redirect: never leave http(s)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_checked(host, port, allowed)
    kind = PinnedHTTPSConnection if parts.scheme == "https" else PinnedHTTPConnection
    return kind(host, port, address, timeout)


@contextmanager
def open_checked(
    url: str, timeout: float, allowed: Iterable[Network] = ()
) -> Iterator[tuple[http.client.HTTPResponse, int]]:
    """GET `url` (following checked redirects); yields the response and its status.

    Raises AddressRefused before any connection to a refused address.
    """
    networks = tuple(allowed)
    for _ in range(MAX_REDIRECTS + 1):
        connection = _connect(url, timeout, networks)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("GET", target, headers={"User-Agent": USER_AGENT})
            response = connection.getresponse()
            location = response.getheader("Location")
            if response.status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            yield response, response.status
            return
        finally:
            connection.close()
    raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects")
