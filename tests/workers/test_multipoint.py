"""Multi-point metric events: the protocol's `points` form and the SDK's `metrics`."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from runs.batches import Batch
from runs.protocol import apply_event
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
    assert [step for event in events for step in event["steps"]] == list(range(steps))
    assert events[0]["values"]["loss"][3] == 1.5 and events[0]["values"]["y"][3] is None
    assert set(events[1]["values"]) == {"loss", "lr", "x", "y"}
    batch = Batch()
    for event in events:
        assert apply_event(event, batch, []) is None
    assert len(batch.points) == 4 * steps


def test_the_sdk_starts_a_new_columnar_line_when_the_keys_change() -> None:
    read, write = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(os.fdopen(read, "rb").read()))
    reader.start()
    reporter = Reporter(write)
    reporter.metrics(
        [(1, {"loss": 1.0}), (2, {"loss": 0.5}), (3, {"loss": 0.4, "val": 0.9}), (4, {"loss": 0.3})]
    )
    reporter.close()
    reader.join(timeout=10)
    events = [json.loads(line) for line in received[0].splitlines()]
    assert [(event["steps"], event["values"]) for event in events] == [
        ([1, 2], {"loss": [1.0, 0.5]}),
        ([3], {"loss": [0.4], "val": [0.9]}),
        ([4], {"loss": [0.3]}),
    ]


def test_a_columnar_event_adds_every_value_and_refuses_ragged_columns_whole() -> None:
    batch = Batch()
    event: dict[str, Any] = {"type": "metric", "steps": [5, 6], "values": {"a": [1, None], "b": [0.5, 2.5]}}
    assert apply_event(event, batch, []) is None
    assert sorted((key, step, value) for key, step, value, _ in batch.points) == [
        ("a", 5, 1.0),
        ("a", 6, None),
        ("b", 5, 0.5),
        ("b", 6, 2.5),
    ]
    ragged = {"type": "metric", "steps": [7, 8], "values": {"a": [1.0, 2.0], "b": [1.0]}}
    assert apply_event(ragged, batch, []) is not None
    assert apply_event({"type": "metric", "steps": [-1], "values": {"a": [1.0]}}, batch, []) is not None
    assert apply_event({"type": "metric", "steps": [], "values": {"a": []}}, batch, []) is not None
    huge = {
        "type": "metric",
        "steps": list(range(60_000)),
        "values": {"a": [0.0] * 60_000, "b": [0.0] * 60_000},
    }
    assert apply_event(huge, batch, []) == "a metric line holds at most 100000 points"
    assert len(batch.points) == 4


def test_a_columnar_event_drops_a_key_that_is_not_a_name_and_keeps_the_rest() -> None:
    batch = Batch()
    event = {"type": "metric", "steps": [1], "values": {"": [1.0], "x" * 201: [1.0], "a": [2.0]}}
    assert apply_event(event, batch, []) is None
    assert [(key, step, value) for key, step, value, _ in batch.points] == [("a", 1, 2.0)]


def test_a_points_event_drops_a_key_that_is_not_a_name_and_keeps_the_rest() -> None:
    batch = Batch()
    event = {
        "type": "metric",
        "points": [{"step": 1, "values": {"": 1.0, "a": 2.0}}, {"step": 2, "values": {"a": 3.0}}],
    }
    assert apply_event(event, batch, []) is None
    assert [(key, step, value) for key, step, value, _ in batch.points] == [("a", 1, 2.0), ("a", 2, 3.0)]
