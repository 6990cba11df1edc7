"""Against the real server (uvicorn --no-proxy-headers, as deployed): a client on 127.0.0.1 that
rotates X-Forwarded-For stays one address for the sign-in lockout and the audit."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from audit.models import AuditRecord
from tests.conftest import PASSWORD, Stack

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
LIMIT = 5  # CONTROLPLANE_LOGIN_FAILURE_LIMIT's default


def test_rotating_x_forwarded_for_does_not_escape_the_lockout(stack: Stack, live_owner: Any) -> None:
    def attempt(password: str) -> httpx.Response:
        forged = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
        return httpx.post(
            f"{stack.base_url}/api/v1/auth/token/",
            json={"username": "olivia", "password": password},
            headers={"X-Forwarded-For": forged},
            timeout=10,
        )

    assert [attempt("not-the-password-1a2b3c").status_code for _ in range(LIMIT)][:1] == [401]
    assert attempt(PASSWORD).status_code == 429
    addresses = set(AuditRecord.objects.filter(action="auth.sign_in_failed").values_list("ip", flat=True))
    assert addresses == {"127.0.0.1"}
