"""The event protocol of training programs: one JSON object per line, applied to a batch.

Pure functions, so the rules of what an event may say are tested without a process. Both paths
into a run use them: the supervisor's events channel (workers/ingest.py) and tracking mode's HTTP
report endpoint (runs/tracking.py), so an event means the same wherever it comes from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from math import isfinite
from typing import Any

from django.utils import timezone

from redaction import Redactor
from runs.attempts import finite_or_none
from runs.batches import Batch
from runs.ingest import PointText, point_texts

MAX_EVENT_LINE_BYTES = 1024 * 1024


def apply_event(event: Any, batch: Batch, pending_files: list[dict[str, Any]]) -> str | None:
    """Apply one parsed event line to the batch; a message when the event is malformed."""
    if not isinstance(event, dict):
        return "an event must be a JSON object"
    kind = event.get("type")
    step = event.get("step")
    if kind == "metric":
        points = event.get("points")
        if points is not None:
            return _apply_points(points, batch)
        if event.get("steps") is not None:
            rows = prepare_columns(event.get("steps"), event.get("values"), timezone.now())
            if isinstance(rows, str):
                return rows
            batch.points.extend(rows)
            return None
        return _apply_point(step, event.get("values"), batch, timezone.now())
    if kind == "progress":
        total = event.get("total")
        if not _is_step(step) or not (total is None or _is_step(total)):
            return "progress needs integer step and total"
        assert isinstance(step, int)
        batch.progress = (step, total if isinstance(total, int) else None)
        return None
    if kind == "status":
        phase = event.get("phase")
        if not isinstance(phase, str) or not phase:
            return "status needs a phase string"
        batch.phase = phase[:32]
        device = event.get("device")
        if isinstance(device, str) and device:
            batch.device = device[:64]
        return None
    if kind in {"checkpoint", "artifact"}:
        path = event.get("path")
        if not isinstance(path, str) or (kind == "checkpoint" and not _is_step(step)):
            return f"{kind} needs a path" + (" and an integer step" if kind == "checkpoint" else "")
        pending_files.append(event)
        return None
    return f"unknown event type {str(kind)[:40]!r}"


MAX_POINTS_PER_EVENT = 100_000


PointEntry = tuple[str, int, float | None, datetime]  # key, step, value, ts: a Batch's point


def _apply_points(points: Any, batch: Batch) -> str | None:
    rows = prepare_points(points, timezone.now())
    if isinstance(rows, str):
        return rows
    batch.points.extend(rows)
    return None


def prepare_points(points: Any, now: datetime) -> list[PointEntry] | str:
    """`{"type": "metric", "points": [{"step": 1, "values": {...}}, ...]}`: many steps in one line
    (what the SDK's `metrics` writes), as the batch's point rows; all or nothing, so a bad point
    never half-applies a line: a message when one is malformed. Pure: the events reader thread
    runs it (workers/ingest.py), off the loop's thread."""
    if not isinstance(points, list) or not points or len(points) > MAX_POINTS_PER_EVENT:
        return f"metric points must be a non-empty list of at most {MAX_POINTS_PER_EVENT} points"
    rows: list[PointEntry] = []
    append = rows.append
    good_keys: set[str] = set()  # keys already checked in this line: most lines repeat a few
    # Inlined _apply_point and _is_step: this loop runs once per point of a flood (a million a
    # minute). JSON gives exact types, so `type(step) is int` is isinstance without bool.
    for point in points:
        if not isinstance(point, dict):
            return "metric points must be objects"
        step, values = point.get("step"), point.get("values")
        if type(step) is not int or step < 0 or not isinstance(values, dict) or not values:
            return "metric needs an integer step >= 0 and a non-empty values object"
        for key, value in values.items():
            if type(value) is not float or not isfinite(value):
                value = finite_or_none(value)
            if key in good_keys:
                append((key, step, value, now))
            elif isinstance(key, str) and 0 < len(key) <= 200:
                good_keys.add(key)
                append((key, step, value, now))
    return rows


def prepare_columns(steps: Any, values: Any, now: datetime) -> list[PointEntry] | str:
    """`{"type": "metric", "steps": [1, 2], "values": {"loss": [0.5, 0.4]}}`: the columnar form
    (what the SDK's `metrics` writes for steps that report the same keys): one list of steps and,
    per key, a list of as many values. Far cheaper to write and to parse than an object a step.
    All or nothing, as the `points` form; pure, run by the events reader thread too."""
    problem = "metric steps must be a non-empty list of integers >= 0 with a list of as many values a key"
    if not isinstance(steps, list) or not steps or not isinstance(values, dict) or not values:
        return problem
    if len(steps) * len(values) > MAX_POINTS_PER_EVENT:
        return f"a metric line holds at most {MAX_POINTS_PER_EVENT} points"
    for step in steps:
        if type(step) is not int or step < 0:
            return problem
    rows: list[PointEntry] = []
    for key, column in values.items():
        if not isinstance(column, list) or len(column) != len(steps):
            return problem
        if not (isinstance(key, str) and 0 < len(key) <= 200):
            continue  # as in the other forms: a bad key is dropped, its line kept
        clean = [v if type(v) is float and isfinite(v) else finite_or_none(v) for v in column]
        rows.extend(zip(repeat(key), steps, clean, repeat(now), strict=False))
    return rows


def _apply_point(step: Any, values: Any, batch: Batch, now: datetime) -> str | None:
    if not _is_step(step) or not isinstance(values, dict) or not values:
        return "metric needs an integer step >= 0 and a non-empty values object"
    assert isinstance(step, int)
    for key, value in values.items():
        if isinstance(key, str) and 0 < len(key) <= 200:
            batch.points.append((key, step, finite_or_none(value), now))
    return None


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class ParsedEvent:
    """An event line as its reader understood it."""

    event: Any = None  # the event, secrets masked (None for a multi-point metric line)
    problem: str | None = None  # why the line is skipped
    points: list[PointEntry] | None = None  # a multi-point metric line's points, checked
    texts: list[PointText] = field(default_factory=list)  # those points formatted for COPY
    newest: Any = None  # that line's newest point


def parse_event(data: bytes, redactor: Redactor) -> ParsedEvent:
    """Parse one whole event line, and check a multi-point line's points into batch rows
    formatted for COPY. Reads only the redactor: safe in a reader thread."""
    try:
        event = redactor.value(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return ParsedEvent(problem=f"not JSON ({error.__class__.__name__})")
    if not isinstance(event, dict) or event.get("type") != "metric":
        return ParsedEvent(event=event)
    points: Any = event.get("points")
    steps: Any = event.get("steps")
    values: Any = event.get("values")
    if points is not None:
        rows = prepare_points(points, timezone.now())
    elif steps is not None:
        rows = prepare_columns(steps, values, timezone.now())
    else:
        return ParsedEvent(event=event)
    if isinstance(rows, str):
        return ParsedEvent(problem=rows)
    if points is not None:
        newest = points[-1]
    else:  # checked: a dict of lists, as many values a key as steps
        newest = {"step": steps[-1], "values": {key: column[-1] for key, column in values.items()}}
    # Only the newest point is kept beside the rows (it times the training loop); the rows are
    # also formatted for COPY here, so the writer's thread does not format them.
    return ParsedEvent(points=rows, texts=point_texts(rows), newest=newest)
