"""The request id: kept when well-formed, replaced (never echoed) when not, bound on every line the
request logs together with the authenticated user's id."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from ops.logs import structured_formatter
from runs.models import Run

pytestmark = pytest.mark.django_db
GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every line logged through the root logger while the test runs, rendered as in production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structured_formatter("json"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def _parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_a_well_formed_request_id_is_kept_returned_and_stored_on_the_launch(
    api: APIClient, owner: User, log_lines: io.StringIO
) -> None:
    response = api.post(
        "/api/v1/runs/",
        {"name": "traced", "program": "tinygpt"},
        format="json",
        HTTP_X_REQUEST_ID="ci-job:42.a_b",
    )
    assert response.status_code == 201
    assert response["X-Request-ID"] == "ci-job:42.a_b"
    assert Run.objects.get(pk=response.json()["id"]).request_id == "ci-job:42.a_b"
    launched = [line for line in _parsed(log_lines) if line["event"] == "run_launched"]
    assert len(launched) == 1
    assert launched[0]["request_id"] == "ci-job:42.a_b"
    assert launched[0]["user_id"] == owner.pk


@pytest.mark.parametrize(
    "malformed",
    [
        "x" * 65,  # too long
        "abc\x01def",  # a control character
        "abc\tdef",
        "id with spaces",
        "café-42",  # not ASCII
        "id\r\nX-Injected: 1",
        "",
    ],
)
def test_a_malformed_request_id_is_replaced_not_echoed(
    api: APIClient, malformed: str, log_lines: io.StringIO
) -> None:
    response = api.post(
        "/api/v1/runs/", {"name": "traced", "program": "tinygpt"}, format="json", HTTP_X_REQUEST_ID=malformed
    )
    assert response.status_code == 201
    given = response["X-Request-ID"]
    assert GENERATED.match(given), given
    if malformed:
        assert malformed not in response.content.decode()
    stored = Run.objects.get(pk=response.json()["id"]).request_id
    assert stored == given
    for line in _parsed(log_lines):
        if malformed:
            assert malformed not in json.dumps(line, ensure_ascii=False)
        assert line.get("request_id") in (None, given)


def test_anonymous_requests_log_no_user_id(anonymous_api: APIClient, log_lines: io.StringIO) -> None:
    response = anonymous_api.get("/api/v1/nonexistent/", HTTP_X_REQUEST_ID="anon-1")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "anon-1"
    lines = [line for line in _parsed(log_lines) if line.get("request_id") == "anon-1"]
    assert lines, "django.request logs the 404"
    assert all("user_id" not in line for line in lines)


def test_session_users_are_named_on_their_request_lines(owner: User, log_lines: io.StringIO) -> None:
    client = APIClient()
    client.force_login(owner)
    response = client.get("/api/v1/runs/999999/", HTTP_X_REQUEST_ID="session-1")
    assert response.status_code == 404
    lines = [line for line in _parsed(log_lines) if line.get("request_id") == "session-1"]
    assert lines
    assert all(line["user_id"] == owner.pk for line in lines)
