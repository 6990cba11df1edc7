"""Which addresses a dataset fetch may reach (ops.netguard); pure, no network traffic."""

from __future__ import annotations

import ipaddress

import pytest

from ops.netguard import REFUSED, address_allowed, check_url

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::127.0.0.1",  # IPv4-compatible
    ],
)
def test_internal_addresses_are_refused_by_default(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address))


def test_an_allowed_network_opens_only_itself() -> None:
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), LOOPBACK)
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), LOOPBACK)
    assert not address_allowed(ipaddress.ip_address("127.0.0.2"), LOOPBACK)
    assert not address_allowed(ipaddress.ip_address("169.254.169.254"), LOOPBACK)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.org/x", "must be an http(s) URL"),
        ("http:///x", "must name a host"),
        ("https://user:pw@example.org/x", "must not carry credentials"),
        ("http://example.org:99999/x", "is not a valid URL"),
        ("https://example.org/" + "x" * 2000, "at most 2000"),
        ("http://169.254.169.254/latest/", REFUSED),
        ("http://[::1]:8080/x", REFUSED),
        ("http://10.2.3.4/x", REFUSED),
        ("http://LOCALHOST./x", REFUSED),
        ("http://api.localhost/x", REFUSED),
    ],
)
def test_urls_are_checked_without_resolving(url: str, problem: str) -> None:
    result = check_url(url)
    assert result is not None and problem in result


def test_a_public_name_passes_the_launch_check() -> None:
    assert check_url("https://data.example.org/corpus.txt?X-Amz-Signature=abc") is None
    assert check_url("http://127.0.0.1:8000/c.txt", LOOPBACK) is None
    assert check_url("http://localhost:8000/c.txt", LOOPBACK) is None
