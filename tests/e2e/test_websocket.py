"""The run websocket against the real server: backlog, live frames, and resuming by seq."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.conftest import Stack, wait_for_status

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


def test_sockets_without_credentials_or_for_unknown_runs_are_refused(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    with pytest.raises(InvalidStatus):
        connect(stack.ws_url("/ws/runs/1/"), open_timeout=10)
    with pytest.raises(InvalidStatus):
        open_socket(stack, "cp_not_a_token", 1)
    with pytest.raises(InvalidStatus):
        open_socket(stack, live_owner[1], 99_999_999)


def test_cookie_sockets_from_a_foreign_origin_are_refused(
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
    with connect(
        stack.ws_url(f"/ws/runs/{run['id']}/"),
        additional_headers={"Cookie": cookie},
        origin=Origin("http://127.0.0.1"),
        open_timeout=10,
    ) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "status"
    with pytest.raises(InvalidStatus):
        connect(
            stack.ws_url(f"/ws/runs/{run['id']}/"),
            additional_headers={"Cookie": cookie},
            origin=Origin("https://evil.example"),
            open_timeout=10,
        )
    wait_for_status(live_api, run["id"], TERMINAL)
