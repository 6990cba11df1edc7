"""A loop of failed sign-ins cannot flood the append-only audit table: the form is rate limited per
address, and repeated failures collapse into the first record plus one summary with the count."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from audit.chain import verify_chain
from audit.models import AuditRecord
from audit.repeats import flush_repeated, open_window
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

WRONG = "not-the-password-5c6d7e"
LIMIT = 5  # CONTROLPLANE_LOGIN_FAILURE_LIMIT's default


def fresh_address() -> str:
    return f"fd00::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


def sign_in(address: str, username: str, password: str) -> Any:
    return Client(REMOTE_ADDR=address).post("/login/", {"username": username, "password": password})


def failures(address: str) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(action="auth.sign_in_failed", ip=address).order_by("id"))


def close_window(address: str, username: str, reason: str) -> AuditRecord | None:
    """What the flush task does when the window's countdown ends."""
    token = open_window("auth.sign_in_failed", (username, "password", reason, address))
    assert token is not None
    return flush_repeated(token)


def test_sixty_failed_sign_ins_for_a_locked_username_add_no_row_and_the_summary_counts_them(
    owner: User, django_capture_on_commit_callbacks: Any
) -> None:
    address = fresh_address()
    with django_capture_on_commit_callbacks() as scheduled:
        for _ in range(LIMIT):
            sign_in(address, "olivia", WRONG)
        assert sign_in(address, "olivia", PASSWORD).status_code == 429, "locked"
        before = len(failures(address))
        answers = {sign_in(address, "olivia", WRONG).status_code for _ in range(60)}
    assert answers == {429}
    assert before == 2, "the first invalid and the first locked_out failure, in full"
    assert len(failures(address)) == before, "60 more failures, not one more row"
    assert len(scheduled) == 2, "one summary scheduled per window"
    invalid, locked = (
        close_window(address, "olivia", "invalid"),
        close_window(address, "olivia", "locked_out"),
    )
    assert invalid is not None and locked is not None
    first_invalid, first_locked = failures(address)[:2]
    assert invalid.details == {
        "username": "olivia",
        "method": "password",
        "reason": "invalid",
        "count": LIMIT - 1,
        "window_seconds": 60,
        "first_record_id": first_invalid.pk,
    }
    # The LIMIT-th failure, the right password while locked, and the 60 of the loop.
    assert locked.details["count"] == 1 + 1 + 60
    assert locked.details["first_record_id"] == first_locked.pk
    assert (locked.ip, locked.outcome, locked.actor_role) == (address, "failure", "anonymous")
    assert len(failures(address)) == 4, f"{LIMIT + 61} failed sign-ins, 4 rows"
    assert verify_chain().ok


def test_a_window_without_repeats_adds_no_summary_and_a_redelivered_flush_adds_nothing(owner: User) -> None:
    address = fresh_address()
    sign_in(address, "nobody-at-all", WRONG)
    assert close_window(address, "nobody-at-all", "invalid") is None
    sign_in(fresh_address(), "olivia", WRONG)
    other = fresh_address()
    sign_in(other, "olivia", WRONG)
    sign_in(other, "olivia", WRONG)
    token = open_window("auth.sign_in_failed", ("olivia", "password", "invalid", other))
    assert token is not None
    assert flush_repeated(token) is not None
    assert flush_repeated(token) is None, "the task may be delivered twice; one summary"
    assert len(failures(address)) == 1


def test_different_usernames_or_addresses_are_recorded_apart(owner: User) -> None:
    address = fresh_address()
    for username in ("olivia", "tomas", "olivia"):
        sign_in(address, username, WRONG)
    sign_in(fresh_address(), "olivia", WRONG)
    assert [r.details["username"] for r in failures(address)] == ["olivia", "tomas"]


def test_with_the_cache_down_every_failure_is_recorded(owner: User) -> None:
    address = fresh_address()
    dead_redis = {"default": {"BACKEND": "ops.cache.CountedRedisCache", "LOCATION": "redis://127.0.0.1:9/0"}}
    with override_settings(CACHES=dead_redis):
        for _ in range(3):
            sign_in(address, "olivia", WRONG)
    assert len(failures(address)) == 3


def _rates(**rates: str) -> Any:
    merged = {"anon": "1000/min", "user": "1000/min", "auth": "1000/min", **rates}
    return override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": merged})


def test_the_sign_in_form_is_rate_limited_per_address_with_429_retry_after_and_the_sign_in_page(
    owner: User,
) -> None:
    address = fresh_address()
    with _rates(auth="3/min"):
        assert [sign_in(address, "nobody", WRONG).status_code for _ in range(3)] == [200, 200, 200]
        refused = sign_in(address, "olivia", PASSWORD)
        assert refused.status_code == 429
        assert 1 <= int(refused["Retry-After"]) <= 60
        page = refused.content.decode()
        assert re.search(r"Too many sign-in attempts from your address\. Try again in \d+ seconds?\.", page)
        assert 'name="password"' in page and "csrfmiddlewaretoken" in page
        assert Client(REMOTE_ADDR=address).get("/login/").status_code == 200, "only POSTs count"
        assert sign_in(fresh_address(), "olivia", PASSWORD).status_code == 302
        forged = Client(REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR=fresh_address()).post(
            "/login/", {"username": "olivia", "password": PASSWORD}
        )
        assert forged.status_code == 429, "a client-sent X-Forwarded-For does not escape it"
    assert len(failures(address)) == 1, "refused attempts never reach authentication or the audit log"
