"""Hardening: sign-in lockout, API rate limits, security headers on every HTML page, CSRF on
every form."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from axes.models import AccessAttempt  # type: ignore[import-untyped]
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit import chain
from audit.models import AuditRecord
from runs.models import Artifact, Run, RunStatus
from runs.storage import artifact_path
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

WRONG = "not-the-password-1a2b3c"
LIMIT = 5  # CONTROLPLANE_LOGIN_FAILURE_LIMIT's default, which the test settings keep


def fresh_address() -> str:
    """Lockouts and rate limits count per client address; each test gets addresses of its own."""
    return f"fd00::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


# -- sign-in lockout --------------------------------------------------------------------------


def _form_attempt(address: str, username: str, password: str) -> Any:
    return Client(REMOTE_ADDR=address).post("/login/", {"username": username, "password": password})


def _token_attempt(address: str, username: str, password: str) -> Any:
    return APIClient(REMOTE_ADDR=address).post(
        "/api/v1/auth/token/", {"username": username, "password": password}, format="json"
    )


def _answers(attempt: Any, address: str, username: str) -> list[tuple[int, str, str]]:
    """Status, body (CSRF tokens blanked) and Retry-After of LIMIT wrong passwords then the right one."""
    answers = []
    for password in [WRONG] * LIMIT + [PASSWORD]:
        response = attempt(address, username, password)
        body = re.sub(r'value="[A-Za-z0-9]{64}"', 'value=""', response.content.decode())
        answers.append((response.status_code, body, response.get("Retry-After", "")))
    return answers


@pytest.mark.parametrize("attempt", [_form_attempt, _token_attempt], ids=["form", "token"])
def test_repeated_failures_lock_the_username_on_that_address_with_the_same_answer_for_unknown_users(
    owner: User, attempt: Any
) -> None:
    address = fresh_address()
    known = _answers(attempt, address, "olivia")
    unknown = _answers(attempt, address, "nobody-at-all")
    statuses = [status for status, _, _ in known]
    expected_first = 200 if attempt is _form_attempt else 401
    # The LIMIT-th failure locks; the right password during the lockout is refused the same way.
    assert statuses == [expected_first] * (LIMIT - 1) + [429, 429]
    assert [(s, r) for s, _, r in known] == [(s, r) for s, _, r in unknown]
    assert [b.replace("olivia", "X") for _, b, _ in known] == [
        b.replace("nobody-at-all", "X") for _, b, _ in unknown
    ]
    locked = known[-1]
    assert locked[2] == str(15 * 60)
    assert "Too many failed sign-in attempts. Try again in 15 minutes." in locked[1]
    if attempt is _token_attempt:
        assert '"code": "locked_out"' in locked[1] or '"code":"locked_out"' in locked[1]
    failures = AuditRecord.objects.filter(
        action="auth.sign_in_failed", ip=address, details__username="olivia"
    )
    # Repeats within a minute are counted, not recorded (the summaries come when the window
    # closes: tests/api/test_audit_sign_in_flood.py).
    assert [r.details["reason"] for r in failures.order_by("id")] == ["invalid", "locked_out"]


def test_a_lockout_is_per_username_and_address(owner: User) -> None:
    address = fresh_address()
    for _ in range(LIMIT):
        _token_attempt(address, "olivia", WRONG)
    assert _token_attempt(address, "olivia", PASSWORD).status_code == 429
    assert _token_attempt(fresh_address(), "olivia", PASSWORD).status_code == 200
    make_user("tomas")
    assert _token_attempt(address, "tomas", PASSWORD).status_code == 200


def test_a_lockout_ends_after_its_time_and_a_success_resets_the_count(owner: User) -> None:
    address = fresh_address()
    for _ in range(LIMIT):
        _form_attempt(address, "olivia", WRONG)
    assert _form_attempt(address, "olivia", PASSWORD).status_code == 429
    AccessAttempt.objects.filter(ip_address=address).update(
        attempt_time=timezone.now() - timedelta(minutes=16)
    )
    assert _form_attempt(address, "olivia", PASSWORD).status_code == 302
    for _ in range(LIMIT - 1):
        assert _form_attempt(address, "olivia", WRONG).status_code == 200
    assert _form_attempt(address, "olivia", PASSWORD).status_code == 302
    for _ in range(LIMIT - 1):
        assert _form_attempt(address, "olivia", WRONG).status_code == 200, "a success starts the count again"


def test_the_lockout_page_carries_the_security_headers(owner: User) -> None:
    address = fresh_address()
    for _ in range(LIMIT):
        response = _form_attempt(address, "olivia", WRONG)
    assert response.status_code == 429
    assert response["Content-Type"].startswith("text/html")
    assert_security_headers(response, "lockout page")


@pytest.mark.django_db(transaction=True)
def test_the_lockout_holds_under_the_asgi_server(stack: Any) -> None:
    username = f"nobody-{uuid.uuid4().hex[:8]}"  # every stack request comes from 127.0.0.1
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        answers = [
            client.post("/api/v1/auth/token/", json={"username": username, "password": WRONG})
            for _ in range(LIMIT + 1)
        ]
    assert [a.status_code for a in answers] == [401] * (LIMIT - 1) + [429, 429]
    assert answers[-1].json() == {
        "detail": "Too many failed sign-in attempts. Try again in 15 minutes.",
        "code": "locked_out",
    }
    assert answers[-1].headers["Retry-After"] == str(15 * 60)
    reasons = AuditRecord.objects.filter(action="auth.sign_in_failed", details__username=username)
    assert [r.details["reason"] for r in reasons.order_by("id")] == ["invalid", "locked_out"]


# -- API rate limits --------------------------------------------------------------------------


def _rates(**rates: str) -> Any:
    merged = {"anon": "1000/min", "user": "1000/min", "auth": "1000/min", **rates}
    return override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": merged})


def _assert_throttled(response: Any) -> None:
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert "throttled" in response.json()["detail"]
    assert 1 <= int(response["Retry-After"]) <= 60


def test_signed_in_callers_are_throttled_per_user(owner: User) -> None:
    mine = APIClient()
    mine.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(owner).plaintext}")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(make_user('tomas')).plaintext}")
    with _rates(user="5/min"):
        assert [mine.get("/api/v1/runs/").status_code for _ in range(5)] == [200] * 5
        _assert_throttled(mine.get("/api/v1/runs/"))
        assert other.get("/api/v1/runs/").status_code == 200


def test_with_the_cache_down_rate_limits_fail_open_instead_of_failing_requests(owner: User) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(owner).plaintext}")
    dead_redis = {"default": {"BACKEND": "ops.cache.CountedRedisCache", "LOCATION": "redis://127.0.0.1:9/0"}}
    with override_settings(CACHES=dead_redis), _rates(user="2/min"):
        answers = [client.get("/api/v1/runs/").status_code for _ in range(4)]
        launched = client.post("/api/v1/runs/", {"name": "x", "program": "scripted"}, format="json")
    assert answers == [200] * 4  # nothing counts while Redis is away, and nothing fails
    assert launched.status_code == 201


def test_anonymous_callers_are_throttled_per_address(owner: User) -> None:
    address = fresh_address()
    with _rates(anon="3/min"):
        answers = [_token_attempt(address, "nobody", WRONG).status_code for _ in range(3)]
        assert answers == [401, 401, 401]
        _assert_throttled(_token_attempt(address, "olivia", PASSWORD))
        assert _token_attempt(fresh_address(), "olivia", PASSWORD).status_code == 200


def test_token_requests_have_a_stricter_limit_that_a_forged_forwarded_for_does_not_escape(
    owner: User,
) -> None:
    address = fresh_address()
    with _rates(auth="2/min"):
        for _ in range(2):
            assert _token_attempt(address, "olivia", PASSWORD).status_code == 200
        forged = APIClient(REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR=fresh_address()).post(
            "/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json"
        )
        _assert_throttled(forged)


# -- security headers and CSRF on every HTML page ---------------------------------------------


def assert_security_headers(response: Any, where: str) -> None:
    csp = response.get("Content-Security-Policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert "script-src" in directives or "default-src" in directives, where
    scripts = directives.get("script-src", directives.get("default-src", []))
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts, where
    assert directives.get("frame-ancestors") == ["'none'"], where
    assert response.get("X-Frame-Options") == "DENY", where
    assert response.get("X-Content-Type-Options") == "nosniff", where
    assert response.get("Referrer-Policy") == "same-origin", where
    assert response.get("Cross-Origin-Opener-Policy") == "same-origin", where


class FormsAndScripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.inline_scripts = 0
        self.inline_handlers: list[str] = []
        self._in_form: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.inline_handlers += [name for name in attributes if name.startswith("on")]
        if tag == "script" and not attributes.get("src"):
            self.inline_scripts += 1
        if tag == "form":
            self._in_form = {"method": (attributes.get("method") or "get").lower(), "csrf": False}
            self.forms.append(self._in_form)
        if tag == "input" and self._in_form is not None and attributes.get("name") == "csrfmiddlewaretoken":
            self._in_form["csrf"] = bool(attributes.get("value"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = None


def _page_patterns() -> list[tuple[str, str, list[str]]]:
    """(name, route, kwarg names) of every page: everything but the API, Django's admin and probes."""
    found: list[tuple[str, str, list[str]]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                if route.startswith(("api/", "admin/")):
                    continue
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and pattern.name:
                found.append((pattern.name, route, list(pattern.pattern.converters)))

    walk(get_resolver().url_patterns, "")
    return [p for p in found if p[0] not in {"healthz", "readyz"} and "metrics" not in p[1]]


def _world() -> tuple[User, dict[str, int]]:
    admin = make_user("ada", "admin")
    owner = make_user("olivia", "operator")
    run = Run.objects.create(
        name="h", owner=admin, program="scripted", queue="hardening", status=RunStatus.FAILED
    )
    key = f"{run.pk}/1/model.bin"
    path = artifact_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 16)
    artifact = Artifact.objects.create(
        run=run, attempt=1, name="model.bin", kind="model", size=16, sha256="b" * 64, storage_key=key
    )
    token = do_issue_token(admin, name="page").token
    record = chain.record("hardening.seed", actor=admin)
    ids = {"run_id": run.pk, "artifact_id": artifact.pk, "token_id": token.pk, "user_id": owner.pk}
    return admin, {**ids, "pk": record.pk}


def _fill(route: str, kwargs: list[str], ids: dict[str, int]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(2)
        return str(ids.get(name, "missing" if match.group(1) == "str" else 999_999))

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", value, route)


def test_every_html_page_carries_the_security_headers_and_every_post_form_a_csrf_token() -> None:
    admin, ids = _world()
    client = Client()
    client.force_login(admin)
    checked: list[str] = []
    for name, route, kwargs in _page_patterns():
        url = _fill(route, kwargs, ids) + ("?ids=" + str(ids["run_id"]) if name == "run-compare" else "")
        response = client.get(url)
        if not response.get("Content-Type", "").startswith("text/html"):
            continue
        assert_security_headers(response, url)
        page = FormsAndScripts()
        page.feed(response.content.decode())
        assert page.inline_scripts == 0, f"{url} has an inline script"
        assert page.inline_handlers == [], f"{url} has inline event handlers {page.inline_handlers}"
        for form in page.forms:
            if form["method"] == "post":
                assert form["csrf"], f"a POST form on {url} has no CSRF token"
        checked.append(name)
    assert {
        "run-list",
        "run-detail",
        "run-launch",
        "audit-list",
        "audit-detail",
        "audit-verify",
        "login",
    } <= set(checked)


@pytest.mark.parametrize(
    ("url", "who", "status"),
    [
        ("/login/", "anonymous", 200),
        ("/no-such-page/", "anonymous", 404),
        ("/audit/", "viewer", 403),
        ("/runs/999999/", "viewer", 404),
    ],
)
def test_sign_in_and_error_pages_carry_the_security_headers(url: str, who: str, status: int) -> None:
    client = Client()
    if who != "anonymous":
        client.force_login(make_user("vera", who))
    response = client.get(url)
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    assert_security_headers(response, url)
    page = FormsAndScripts()
    page.feed(response.content.decode())
    assert all(form["csrf"] for form in page.forms if form["method"] == "post"), url


def test_a_bad_host_gets_the_400_page_with_the_security_headers() -> None:
    response = Client(HTTP_HOST="evil.example").get("/login/")
    assert response.status_code == 400
    assert_security_headers(response, "400 page")


def test_a_post_without_a_csrf_token_is_refused() -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "olivia", "password": PASSWORD})
    assert response.status_code == 403
    assert_security_headers(response, "CSRF failure page")
