"""The run websocket against the real server: backlog, live frames, and resuming by seq."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from accounts.models import ApiToken
from accounts.tokens import do_issue_token, do_revoke_token
from accounts.users import do_set_active
from audit.models import AuditRecord
from runs.consumers import RECHECK_SECONDS
from tests.conftest import Stack, make_user, wait_for_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def open_socket(stack: Stack, token: str, run_id: int, after: int = 0) -> ClientConnection:
    return connect(
        stack.ws_url(f"/ws/runs/{run_id}/?after={after}"),
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=10,
    )


def read_frames(socket: ClientConnection, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(socket.recv(timeout=timeout))
        frames.append(frame)
        if until(frame, frames):
            return frames


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [line["seq"] for frame in frames if frame["type"] == "log" for line in frame["lines"]]


def test_a_socket_gets_the_backlog_then_live_lines_and_resumes_without_gap_or_duplicate(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    token = live_owner[1]
    run = live_api.post(
        "/api/v1/runs/",
        json={"name": "ws", "program": "scripted", "params": {"mode": "drip", "lines": 120, "sleep": 6}},
    ).json()
    with open_socket(stack, token, run["id"]) as socket:
        first = read_frames(socket, lambda frame, frames: len(seqs(frames)) >= 30)
    assert first[0]["type"] == "status"
    received = seqs(first)
    assert received == list(range(1, len(received) + 1))

    # Reconnect from the last seq seen, as a client does after a network cut.
    with open_socket(stack, token, run["id"], after=received[-1]) as socket:
        rest = read_frames(socket, lambda frame, _: frame["type"] == "status" and frame["status"] in TERMINAL)
    received += seqs(rest)
    assert rest[-1]["status"] == "succeeded"

    api_lines = []
    after = 0
    while page := live_api.get(f"/api/v1/runs/{run['id']}/logs/?after={after}").json()["results"]:
        api_lines += page
        after = page[-1]["seq"]
    # Late lines (the exit notice) may follow the terminal status frame; fetch them as a client would.
    with open_socket(stack, token, run["id"], after=received[-1]) as socket:
        socket.recv(timeout=10)  # status
        tail: list[int] = []
        while len(received) + len(tail) < len(api_lines):
            tail += seqs([json.loads(socket.recv(timeout=10))])
    received += tail
    assert received == [line["seq"] for line in api_lines]
    assert len(received) == len(set(received))
    metric_frames = [frame for frame in first + rest if frame["type"] == "metric"]
    assert metric_frames and all({"step", "values"} <= set(p) for f in metric_frames for p in f["points"])


def test_a_socket_opened_after_the_run_replays_the_whole_log(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    run = live_api.post(
        "/api/v1/runs/", json={"name": "ws2", "program": "scripted", "params": {"lines": 2500}}
    ).json()
    wait_for_status(live_api, run["id"], TERMINAL)
    total = live_api.get(f"/api/v1/runs/{run['id']}/logs/?after=0&limit=5000").json()["results"][-1]["seq"]
    with open_socket(stack, live_owner[1], run["id"], after=100) as socket:
        frames = read_frames(socket, lambda frame, frames: seqs(frames)[-1:] == [total])
    assert seqs(frames) == list(range(101, total + 1))
    assert all(len(frame["lines"]) <= 2000 for frame in frames if frame["type"] == "log")


def closed_with(socket: ClientConnection, timeout: float = 10) -> tuple[int | None, float]:
    """Read until the server closes; its close code and how long that took."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        try:
            socket.recv(timeout=deadline - time.monotonic())
        except ConnectionClosed:
            return socket.close_code, time.monotonic() - started
    raise AssertionError(f"the socket was still open after {timeout} s")


def test_sockets_without_credentials_or_for_unknown_runs_are_refused_with_close_codes(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    # Accepted, then closed with the code docs/security.md names, so a client can tell
    # "sign in again" from "not allowed" from "no such run" (a bare HTTP 403 says none of that).
    with connect(stack.ws_url("/ws/runs/1/"), open_timeout=10) as socket:
        assert closed_with(socket)[0] == 4401
    with open_socket(stack, "cp_not_a_token", 1) as socket:
        assert closed_with(socket)[0] == 4401
    with open_socket(stack, live_owner[1], 99_999_999) as socket:
        assert closed_with(socket)[0] == 4404


@contextmanager
def _open_run_socket(stack: Stack, live_api: httpx.Client, token: str) -> Iterator[ClientConnection]:
    run = live_api.post(
        "/api/v1/runs/", json={"name": "w", "program": "scripted", "params": {"lines": 1}}
    ).json()
    with open_socket(stack, token, run["id"]) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "status"
        yield socket


def test_a_socket_is_closed_4401_within_seconds_of_its_token_being_revoked(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    user, _ = live_owner
    issued = do_issue_token(user, name="watcher")
    with _open_run_socket(stack, live_api, issued.plaintext) as socket:
        do_revoke_token(user, issued.token)
        assert stack.client(issued.plaintext).get("/api/v1/runs/").status_code == 401  # REST: at once
        code, took = closed_with(socket)
    assert code == 4401 and took < RECHECK_SECONDS + 3


def test_a_socket_is_closed_4401_when_its_user_is_deactivated(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    admin = make_user("ada", "admin")
    viewer = make_user("vince", "viewer")
    with _open_run_socket(stack, live_api, do_issue_token(viewer).plaintext) as socket:
        do_set_active(admin, viewer, False)
        code, took = closed_with(socket)
    assert code == 4401 and took < RECHECK_SECONDS + 3


def test_a_socket_is_closed_4403_when_its_grant_no_longer_reads_runs(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    # No role lacks `run.read` today, so the grant is narrowed where the policy reads it: the
    # token's scopes (effective scopes = token scopes ∩ role scopes). Same check, same code.
    user, _ = live_owner
    issued = do_issue_token(user, name="narrowed")
    with _open_run_socket(stack, live_api, issued.plaintext) as socket:
        ApiToken.objects.filter(pk=issued.token.pk).update(scopes=["launch"])
        code, took = closed_with(socket)
    assert code == 4403 and took < RECHECK_SECONDS + 3
    assert AuditRecord.objects.filter(action="access.denied", details__action="run.read").exists()


def test_cookie_sockets_need_an_origin_matching_scheme_host_and_port(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    browser = httpx.Client(base_url=stack.base_url)
    login_page = browser.get("/login/")
    csrf = browser.cookies["csrftoken"]
    signed_in = browser.post(
        "/login/",
        data={
            "username": "olivia",
            "password": "correct-horse-battery-staple-42",
            "csrfmiddlewaretoken": csrf,
        },
        headers={"Referer": stack.base_url + "/login/"},
    )
    assert login_page.status_code == 200 and signed_in.status_code == 302
    run = live_api.post(
        "/api/v1/runs/", json={"name": "c", "program": "scripted", "params": {"lines": 1}}
    ).json()
    cookie = f"sessionid={browser.cookies['sessionid']}"
    port = stack.base_url.rsplit(":", 1)[1]

    def with_origin(origin: str) -> ClientConnection:
        return connect(
            stack.ws_url(f"/ws/runs/{run['id']}/"),
            additional_headers={"Cookie": cookie},
            origin=Origin(origin),
            open_timeout=10,
        )

    # The page's own origin: the scheme it was served with (plain http here), host and port.
    with with_origin(f"http://127.0.0.1:{port}") as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "status"
        # Past a re-check of the session (every RECHECK_SECONDS), the socket is still open.
        time.sleep(RECHECK_SECONDS * 1.5)
        socket.send("ping")
        while (message := socket.recv(timeout=10)) != "pong":
            assert json.loads(message)["type"] in {"log", "status", "metric"}
    refused = {
        "https://evil.example": "foreign host",
        "http://evil:8000": "foreign host",
        f"http://evil:{port}": "foreign host, our port",
        f"https://127.0.0.1:{port}": "scheme mismatch (the server is plain http/ws)",
        "http://127.0.0.1:9999": "wrong port",
        "https://localhost:9999": "wrong scheme and port",
        "http://127.0.0.1": "default port 80, not ours",
        "null": "an opaque origin (sandboxed frame, file://)",
    }
    for origin, why in refused.items():
        with with_origin(origin) as socket:
            assert closed_with(socket)[0] == 4403, why
    wait_for_status(live_api, run["id"], TERMINAL)


def test_a_cookie_socket_is_closed_4401_when_its_session_signs_out(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    browser = httpx.Client(base_url=stack.base_url)
    browser.get("/login/")
    signed_in = browser.post(
        "/login/",
        data={
            "username": "olivia",
            "password": "correct-horse-battery-staple-42",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": stack.base_url + "/login/"},
    )
    assert signed_in.status_code == 302
    run = live_api.post(
        "/api/v1/runs/", json={"name": "s", "program": "scripted", "params": {"lines": 1}}
    ).json()
    port = stack.base_url.rsplit(":", 1)[1]
    with connect(
        stack.ws_url(f"/ws/runs/{run['id']}/"),
        additional_headers={"Cookie": f"sessionid={browser.cookies['sessionid']}"},
        origin=Origin(f"http://127.0.0.1:{port}"),
        open_timeout=10,
    ) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "status"
        signed_out = browser.post(
            "/logout/",
            data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            headers={"Referer": stack.base_url + "/"},
        )
        assert signed_out.status_code == 302
        code, took = closed_with(socket)
    assert code == 4401 and took < RECHECK_SECONDS + 3
