"""The run websocket's live frames as the channel layer carries them (runs.events): one message per
batch, each frame already JSON. A viewer sends a contiguous log frame as it is; one that repeats
lines it has (its backlog read saw them) is cut to the new lines; one that starts past a gap is
preceded by the missing lines from the database; other frames pass as they are; the older
one-frame message ("run.frame") still works."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter

from accounts.tokens import do_issue_token
from accounts.websocket import TokenOrSessionAuthMiddleware
from controlplane.routing import websocket_urlpatterns
from runs import events
from runs.models import LogLine, Run
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)
TS = datetime(2026, 12, 8, tzinfo=UTC)


def lines(run: Run, seqs: range) -> None:
    LogLine.objects.bulk_create(
        [LogLine(run=run, seq=s, ts=TS, stream="stdout", line=f"line {s}") for s in seqs]
    )


def log_frame(seqs: range) -> events.LogFrame:
    return events.log_frame([(s, TS, "stdout", f"line {s}") for s in seqs])


def test_live_frames_are_sent_as_encoded_cut_to_new_lines_or_preceded_by_the_gap() -> None:
    owner = make_user("vera", "operator")
    run = Run.objects.create(name="frames", owner=owner, program="scripted", queue="frames", status="running")
    lines(run, range(1, 4))
    token = do_issue_token(owner).plaintext
    app = TokenOrSessionAuthMiddleware(URLRouter(websocket_urlpatterns))
    layer = get_channel_layer()
    group = events.run_group(run.pk)
    metric: events.MetricFrame = {"type": "metric", "points": [{"step": 1, "values": {"loss": 0.5}}]}

    async def session() -> list[Any]:
        scope = {
            "type": "websocket",
            "path": f"/ws/runs/{run.pk}/",
            "query_string": b"after=0",
            "headers": [(b"authorization", f"Bearer {token}".encode())],
            "subprotocols": [],
        }
        socket = ApplicationCommunicator(app, scope)
        await socket.send_input({"type": "websocket.connect"})
        assert (await socket.receive_output(timeout=5))["type"] == "websocket.accept"
        received = [await socket.receive_output(timeout=5) for _ in range(2)]  # status, backlog 1-3

        async def publish(message: dict[str, Any], count: int) -> None:
            await layer.group_send(group, message)
            received.extend([await socket.receive_output(timeout=5) for _ in range(count)])

        frames = [events.encoded(log_frame(range(4, 6))), events.encoded(metric)]
        await publish({"type": "run.frames", "frames": frames}, 2)  # contiguous: as they are
        await publish({"type": "run.frames", "frames": [events.encoded(log_frame(range(5, 7)))]}, 1)
        await publish(
            {"type": "run.frames", "frames": [events.encoded(log_frame(range(1, 4)))]}, 0
        )  # all seen
        await database_sync_to_async(lines)(run, range(7, 10))
        await publish({"type": "run.frames", "frames": [events.encoded(log_frame(range(9, 11)))]}, 2)
        await publish({"type": "run.frame", "frame": log_frame(range(11, 12))}, 1)  # the older message
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(timeout=5)
        return received

    sent = async_to_sync(session)()
    texts = [message["text"] for message in sent]
    decoded = [json.loads(text) for text in texts]
    assert decoded[0]["type"] == "status"
    seqs = [
        [line["seq"] for line in frame["lines"]] if frame["type"] == "log" else frame["type"]
        for frame in decoded
    ]
    # backlog; 4-5 as published, the metric frame; 6 only (5 was sent); nothing for 1-3; the gap
    # 7-9 from the database, then 10; 11 from the one-frame message.
    assert seqs[1:] == [[1, 2, 3], [4, 5], "metric", [6], [7, 8, 9], [10], [11]]
    assert texts[2] == events.encode(log_frame(range(4, 6))) and texts[3] == events.encode(metric)
