"""runs/protocol.py: what each event line of a program may say, and what it does to a batch."""

from __future__ import annotations

from typing import Any

import pytest

from runs.batches import Batch
from runs.protocol import apply_event


def apply(event: Any) -> tuple[str | None, Batch, list[dict[str, Any]]]:
    batch = Batch()
    files: list[dict[str, Any]] = []
    return apply_event(event, batch, files), batch, files


def test_a_metric_adds_one_point_per_key_with_non_finite_values_as_none() -> None:
    problem, batch, _ = apply({"type": "metric", "step": 3, "values": {"loss": 0.5, "lr": None, "gn": "inf"}})
    assert problem is None
    assert [(key, step, value) for key, step, value, _ in batch.points] == [
        ("loss", 3, 0.5),
        ("lr", 3, None),
        ("gn", 3, None),
    ]


def test_metric_keys_that_are_empty_too_long_or_not_strings_are_dropped_not_fatal() -> None:
    problem, batch, _ = apply({"type": "metric", "step": 0, "values": {"": 1.0, "k" * 201: 2.0, "ok": 3.0}})
    assert problem is None
    assert [key for key, *_ in batch.points] == ["ok"]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([1, 2], "an event must be a JSON object"),
        ({"type": "metric", "step": -1, "values": {"a": 1}}, "metric needs an integer step >= 0"),
        ({"type": "metric", "step": True, "values": {"a": 1}}, "metric needs an integer step >= 0"),
        ({"type": "metric", "step": 1, "values": {}}, "non-empty values object"),
        ({"type": "progress", "step": "3"}, "progress needs integer step and total"),
        ({"type": "progress", "step": 3, "total": -5}, "progress needs integer step and total"),
        ({"type": "status"}, "status needs a phase string"),
        ({"type": "status", "phase": ""}, "status needs a phase string"),
        ({"type": "checkpoint", "path": "c.pt"}, "checkpoint needs a path and an integer step"),
        ({"type": "checkpoint", "step": 1, "path": 7}, "checkpoint needs a path and an integer step"),
        ({"type": "artifact", "kind": "model"}, "artifact needs a path"),
        ({"type": "teleport"}, "unknown event type 'teleport'"),
        ({"step": 1}, "unknown event type 'None'"),
    ],
)
def test_a_malformed_event_is_named_and_changes_nothing(event: Any, message: str) -> None:
    problem, batch, files = apply(event)
    assert problem is not None
    assert message in problem
    assert not batch
    assert files == []


def test_progress_without_a_total_keeps_the_step_and_an_unknown_total() -> None:
    _, batch, _ = apply({"type": "progress", "step": 5})
    assert batch.progress == (5, None)
    _, batch, _ = apply({"type": "progress", "step": 5, "total": 10})
    assert batch.progress == (5, 10)


def test_a_status_sets_the_phase_and_the_device_both_bounded() -> None:
    _, batch, _ = apply({"type": "status", "phase": "p" * 50, "device": "d" * 100})
    assert batch.phase == "p" * 32
    assert batch.device == "d" * 64
    _, batch, _ = apply({"type": "status", "phase": "training", "device": ""})
    assert (batch.phase, batch.device) == ("training", None)


def test_checkpoints_and_artifacts_wait_for_registration_in_order() -> None:
    batch = Batch()
    files: list[dict[str, Any]] = []
    first = {"type": "checkpoint", "step": 10, "path": "checkpoints/step-10.pt"}
    second = {"type": "artifact", "path": "model.safetensors", "kind": "model"}
    assert apply_event(first, batch, files) is None
    assert apply_event(second, batch, files) is None
    assert files == [first, second]
