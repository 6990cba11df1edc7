"""Inputs that once gave 500s: deep JSON, NUL and unpaired surrogates, made-up cursors, ids beyond
bigint. Each is a 400 naming the field (JSON for the API, a page for HTML), answered in one place
per class: ops.parsers (JSON bodies), ops.middleware.InputGuardMiddleware (path, query, forms),
ops.pagination (cursors), ops.inputs.parse_id (ids)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client

from runs.models import Run
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
BAD_TEXT = {"nul": "a\x00b", "surrogate": "a\ud800b"}
PAGED = ["/api/v1/runs/", "/api/v1/audit/", "/api/v1/tokens/", "/api/v1/users/", "/api/v1/dead-letters/"]
PAGES = ["/", "/audit/", "/account/tokens/", "/users/", "/secrets/", "/compare/", "/runs/new/"]


@pytest.fixture
def admin_client() -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(make_user("ada", "admin"))
    return client


def post_json(client: Client, path: str, body: Any) -> Any:
    # json.dumps escapes a lone surrogate as "\ud800", as a hostile client would send it.
    return client.post(path, json.dumps(body), content_type="application/json")


def test_deeply_nested_json_on_the_anonymous_token_endpoint_is_a_400() -> None:
    client = Client(raise_request_exception=False)
    for depth in (40, 5000, 100_000):
        response = client.post(
            "/api/v1/auth/token/", "[" * depth + "]" * depth, content_type="application/json"
        )
        assert response.status_code == 400, (depth, response.content[:200])
    nested: Any = "x"
    for _ in range(40):
        nested = {"a": nested}
    response = post_json(client, "/api/v1/auth/token/", {"username": nested, "password": "x"})
    assert response.status_code == 400
    assert list(response.json()) == ["username" + ".a" * 32]


@pytest.mark.parametrize("kind", list(BAD_TEXT))
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/auth/token/", {"username": "{bad}", "password": "x"}, "username"),
        ("/api/v1/runs/", {"name": "{bad}", "program": "tinygpt"}, "name"),
        (
            "/api/v1/runs/",
            {"name": "n", "program": "tinygpt", "params": {"device": "{bad}"}},
            "params.device",
        ),
        ("/api/v1/runs/", {"name": "n", "program": "tinygpt", "params": {"{bad}": 1}}, "params.a?b"),
        ("/api/v1/tokens/", {"name": "{bad}"}, "name"),
        ("/api/v1/users/", {"username": "u", "email": "{bad}", "password": "p" * 20}, "email"),
        ("/api/v1/secrets/", {"name": "S_ONE", "value": "12345678{bad}"}, "value"),
        ("/api/v1/runs/", {"name": "n", "program": "tinygpt", "secrets": ["{bad}"]}, "secrets[0]"),
    ],
)
def test_nul_and_surrogates_in_json_bodies_are_400s_naming_the_field(
    admin_client: Client, kind: str, path: str, body: dict[str, Any], field: str
) -> None:
    hostile = json.loads(json.dumps(body).replace("{bad}", json.dumps(BAD_TEXT[kind])[1:-1]))
    response = post_json(admin_client, path, hostile)
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()


@pytest.mark.parametrize("value", ["a%00b", "%ED%A0%80"])
@pytest.mark.parametrize("path", PAGED + PAGES + ["/api/v1/secrets/", "/api/v1/runs/states/"])
def test_nul_in_a_query_string_is_a_400_naming_the_parameter(
    admin_client: Client, path: str, value: str
) -> None:
    response = admin_client.get(f"{path}?q={value}&status={value}")
    assert response.status_code < 500, response.content[:300]
    if value == "a%00b":  # a percent-encoded surrogate decodes to U+FFFD: harmless text
        assert response.status_code == 400
        if path.startswith("/api/"):
            assert response.json() == {"q": ["must not contain NUL characters"]}
        else:
            assert b"q</span>: must not contain NUL characters" in response.content


def test_nul_in_a_path_is_a_400(admin_client: Client) -> None:
    assert admin_client.get("/secrets/a%00b/").status_code == 400
    assert admin_client.get("/api/v1/secrets/a%00b/").json() == {"path": ["must not contain NUL characters"]}


def _cursor(query: str) -> str:
    return base64.b64encode(query.encode()).decode()


@pytest.mark.parametrize("path", PAGED)
@pytest.mark.parametrize(
    "cursor",
    ["abc", _cursor("o=1&p=abc"), _cursor("r=1&p=x%00y"), _cursor(f"p={2**70}"), _cursor("o=x"), "%00"],
)
def test_a_made_up_cursor_is_a_400_naming_cursor(admin_client: Client, path: str, cursor: str) -> None:
    response = admin_client.get(path, {"cursor": cursor} if cursor != "%00" else None, QUERY_STRING="")
    if cursor == "%00":
        response = admin_client.get(f"{path}?cursor=%00")
    assert response.status_code == 400, (cursor, response.content[:300])
    assert "cursor" in response.json()


def test_a_real_cursor_still_pages(admin_client: Client, owner: User) -> None:
    for index in range(3):
        Run.objects.create(name=f"r{index}", owner=owner, program="scripted", queue="q")
    first = admin_client.get("/api/v1/runs/?page_size=2").json()
    second = admin_client.get(first["next"])
    assert second.status_code == 200 and len(second.json()["results"]) == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (f"runs={2**63}", "runs"),
        (f"run=1&run={2**63}", "run"),
        ("runs=" + "9" * 5000, "runs"),
        ("runs=1,x", "runs"),
    ],
)
def test_an_id_beyond_bigint_on_the_compare_page_is_a_400_naming_the_field(
    admin_client: Client, query: str, field: str
) -> None:
    response = admin_client.get(f"/compare/?{query}")
    assert response.status_code == 400
    assert f'<span class="error-field">{field}</span>' in response.content.decode()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs/{big}/",
        "/api/v1/runs/{big}/charts/",
        "/runs/{big}/",
        "/api/v1/users/{big}/",
        "/audit/{big}/",
    ],
)
def test_api_and_page_ids_beyond_bigint_are_not_found(admin_client: Client, path: str) -> None:
    assert admin_client.get(path.format(big=2**63)).status_code == 404


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/login/", {"username": "a\x00b", "password": "x"}),
        ("/runs/new/", {"name": "a\x00b", "program": "tinygpt"}),
        ("/account/tokens/", {"name": "a\x00b"}),
        ("/users/", {"username": "a\x00b", "email": "x@example.org", "role": "viewer"}),
        ("/secrets/new/", {"name": "S_TWO", "value": "a\x00bcdefghij"}),
    ],
)
def test_nul_in_an_html_form_is_a_400_page(admin_client: Client, path: str, form: dict[str, str]) -> None:
    for encoded in (True, False):  # a browser's urlencoded form, and multipart as a script sends it
        if encoded:
            response = admin_client.post(
                path, urlencode(form), content_type="application/x-www-form-urlencoded"
            )
        else:
            response = admin_client.post(path, form)
        assert response.status_code == 400, response.content[:300]
        assert b"must not contain NUL characters" in response.content


HOSTILE_FORM_VALUES = ["a\x00b", "9" * 30, str(2**63), "-1", ""]


def test_every_page_answers_hostile_query_strings_and_forms_without_a_5xx() -> None:
    """Every HTML route (GET with hostile query params, POST of hostile values to each of its
    form fields, urlencoded and multipart); the figures are printed for the record."""
    from tests.api.test_hardening import _fill, _page_patterns, _world

    admin, ids = _world()
    client = Client(raise_request_exception=False)
    client.force_login(admin)
    sent, server_errors = 0, []
    for _name, route, kwargs in _page_patterns():
        url = _fill(route, kwargs, ids)
        page = client.get(url)
        fields = set(re.findall(r'name="([a-z_]+)"', page.content.decode(errors="replace"))) - {
            "csrfmiddlewaretoken"
        }
        for value in HOSTILE_FORM_VALUES:
            quoted = quote(value)
            answers = [client.get(f"{url}?q={quoted}&cursor={quoted}&runs={quoted}&page_size={quoted}")]
            form = {
                field: value for field in sorted(fields | {"name", "username", "value", "role", "program"})
            }
            answers.append(
                client.post(url, urlencode(form), content_type="application/x-www-form-urlencoded")
            )
            answers.append(client.post(url, form))
            sent += len(answers)
            server_errors += [
                f"{url} {value[:12]!r}: {a.status_code}" for a in answers if a.status_code >= 500
            ]
    print(f"pages fuzzed: {sent} requests, {len(server_errors)} 5xx")
    assert sent > 100 and not server_errors, server_errors
