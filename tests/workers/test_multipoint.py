"""Multi-point metric events: the protocol's `points` form and the SDK's `metrics`."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from runs.attempts import Batch
from workers.protocol import apply_event
from workers.sdk import VALUES_PER_LINE, Reporter


def test_a_points_event_adds_every_step_of_every_key() -> None:
    batch = Batch()
    event = {
        "type": "metric",
        "points": [{"step": 1, "values": {"a": 1.0, "b": None}}, {"step": 2, "values": {"a": 2}}],
    }
    assert apply_event(event, batch, []) is None
    assert [(key, step, value) for key, step, value, _ in batch.points] == [
        ("a", 1, 1.0),
        ("b", 1, None),
        ("a", 2, 2.0),
    ]


def test_a_points_event_with_one_bad_point_adds_nothing() -> None:
    batch = Batch()
    event: dict[str, Any] = {
        "type": "metric",
        "points": [{"step": 1, "values": {"a": 1}}, {"step": -1, "values": {"a": 2}}],
    }
    assert apply_event(event, batch, []) == "metric needs an integer step >= 0 and a non-empty values object"
    assert batch.points == []
    assert apply_event({"type": "metric", "points": []}, batch, []) is not None
    assert apply_event({"type": "metric", "points": [3]}, batch, []) == "metric points must be objects"


def test_the_sdk_packs_points_into_lines_under_the_limit() -> None:
    read, write = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(os.fdopen(read, "rb").read()))
    reader.start()  # the lines are larger than a pipe's buffer
    reporter = Reporter(write)
    steps = VALUES_PER_LINE // 4 + 10
    reporter.metrics(
        (step, {"loss": step / 2, "lr": 0.1, "x": 1.0, "y": float("nan")}) for step in range(steps)
    )
    reporter.close()
    reader.join(timeout=10)
    lines = received[0].splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 2  # 4 values a step: VALUES_PER_LINE // 4 steps a line
    got = [point for event in events for point in event["points"]]
    assert [point["step"] for point in got] == list(range(steps))
    assert got[3]["values"] == {"loss": 1.5, "lr": 0.1, "x": 1.0, "y": None}
    batch = Batch()
    for event in events:
        assert apply_event(event, batch, []) is None
    assert len(batch.points) == 4 * steps
