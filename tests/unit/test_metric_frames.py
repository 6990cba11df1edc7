"""The websocket's metric frame: every point of an ordinary batch; a sample of a flood's batch
that says it is one."""

from __future__ import annotations

from datetime import UTC, datetime

from runs.events import MAX_FRAME_POINTS, metric_frame

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_small_batch_frame_holds_every_point_by_step() -> None:
    frame = metric_frame([("a", 2, 1.0, NOW), ("b", 1, None, NOW), ("a", 1, 0.5, NOW)])
    assert frame == {
        "type": "metric",
        "points": [{"step": 1, "values": {"b": None, "a": 0.5}}, {"step": 2, "values": {"a": 1.0}}],
    }


def test_a_flood_batch_frame_is_a_bounded_sample_keeping_each_keys_newest_point() -> None:
    keys = [f"k{i}" for i in range(7)]
    rows = [(key, step, float(step), NOW) for step in range(3_000) for key in keys]
    frame = metric_frame(rows)
    assert frame["sampled_from"] == 21_000
    count = sum(len(point["values"]) for point in frame["points"])
    assert MAX_FRAME_POINTS // 2 <= count <= MAX_FRAME_POINTS + len(keys)
    newest = frame["points"][-1]
    assert newest == {"step": 2_999, "values": {key: 2_999.0 for key in keys}}
    steps = [point["step"] for point in frame["points"]]
    assert steps == sorted(steps) and steps[0] == 0
