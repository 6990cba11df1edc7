"""Forwarded headers count only from CONTROLPLANE_TRUSTED_PROXIES: the lockout, the throttles and
the audit see the TCP peer unless a trusted proxy vouches for the client."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from rest_framework.test import APIClient

from audit.models import AuditRecord
from controlplane.env import parse_networks
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

WRONG = "not-the-password-1a2b3c"
LIMIT = 5  # CONTROLPLANE_LOGIN_FAILURE_LIMIT's default, which the test settings keep
LOOPBACK_TRUSTED = parse_networks("CONTROLPLANE_TRUSTED_PROXIES", ["127.0.0.1/32"])


def fresh_address(prefix: str = "fd00::") -> str:
    # In the canonical form the product records (ops.forwarded normalises addresses): a group
    # such as "0263" is stored as "263", so a raw one would miss its own audit row (CI run 4).
    return str(ipaddress.ip_address(f"{prefix}{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"))


def _token_attempt(peer: str, forwarded_for: str, password: str = WRONG) -> Any:
    return APIClient(REMOTE_ADDR=peer).post(
        "/api/v1/auth/token/",
        {"username": "olivia", "password": password},
        format="json",
        HTTP_X_FORWARDED_FOR=forwarded_for,
    )


def test_rotating_x_forwarded_for_does_not_escape_the_lockout_without_trusted_proxies(owner: User) -> None:
    peer = fresh_address()
    for _ in range(LIMIT):
        _token_attempt(peer, fresh_address("fd01::"))
    # A new claimed address each time, the right password: still the same peer, still locked out.
    assert _token_attempt(peer, fresh_address("fd01::"), PASSWORD).status_code == 429


@override_settings(TRUSTED_PROXIES=LOOPBACK_TRUSTED)
def test_behind_a_trusted_proxy_the_forwarded_client_is_the_address(owner: User) -> None:
    client = fresh_address("fd02::")
    for _ in range(LIMIT):
        _token_attempt("127.0.0.1", f"{client}, 127.0.0.1")  # the proxy chain: client, then proxy
    assert _token_attempt("127.0.0.1", client, PASSWORD).status_code == 429
    # Another client behind the same proxy is not locked out with it.
    assert _token_attempt("127.0.0.1", fresh_address("fd03::"), PASSWORD).status_code == 200


@override_settings(TRUSTED_PROXIES=LOOPBACK_TRUSTED)
def test_a_client_cannot_extend_the_chain_past_the_trusted_proxy(owner: User) -> None:
    # The client sent "X-Forwarded-For: <spoof>"; the trusted proxy appended the address it saw.
    seen = fresh_address("fd04::")
    for _ in range(LIMIT):
        _token_attempt("127.0.0.1", f"{fresh_address('fd05::')}, {seen}")
    assert _token_attempt("127.0.0.1", f"{fresh_address('fd05::')}, {seen}", PASSWORD).status_code == 429


def test_audit_rows_carry_the_real_peer_not_the_claim(owner: User) -> None:
    peer = fresh_address("fd06::")
    _token_attempt(peer, "198.51.100.7")
    # Found by address, not as the newest row: a housekeeping worker of another suite may append
    # a sign-in-failure summary (audit.repeats) to the same database at any moment.
    failures = AuditRecord.objects.filter(action="auth.sign_in_failed", details__username="olivia")
    assert failures.filter(ip=peer).exists()
    assert not failures.filter(ip__contains="198.51.100.7").exists()


@override_settings(TRUSTED_PROXIES=LOOPBACK_TRUSTED)
def test_audit_rows_behind_a_trusted_proxy_carry_the_client_and_the_peer(owner: User) -> None:
    client = fresh_address("fd07::")
    _token_attempt("127.0.0.1", client)
    failures = AuditRecord.objects.filter(action="auth.sign_in_failed", ip__startswith=client)
    assert list(failures.values_list("ip", flat=True)) == [f"{client} via 127.0.0.1"]


def test_forwarded_proto_from_an_untrusted_peer_is_dropped() -> None:
    response = APIClient(REMOTE_ADDR="192.0.2.10").get("/healthz", HTTP_X_FORWARDED_PROTO="https")
    assert response.wsgi_request.META.get("HTTP_X_FORWARDED_PROTO") is None
    assert response.wsgi_request.META["CONTROLPLANE_PEER_ADDR"] == "192.0.2.10"
