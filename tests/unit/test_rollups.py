"""Rollups kept at write time equal a brute-force min/max/last/count over the points, including
after a resumed attempt rewrites steps (the touched buckets are recomputed, never folded)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from runs import rollups, selectors
from runs.ingest import point_texts, write_batch_points, write_metric_points
from runs.models import MetricPoint, MetricRollup, MetricSeries, Run

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def brute(series_id: int, level: int) -> dict[int, tuple[object, ...]]:
    buckets: dict[int, list[tuple[int, float | None]]] = {}
    for step, value in MetricPoint.objects.filter(series_id=series_id).values_list("step", "value"):
        buckets.setdefault(step >> level, []).append((step, value))
    expected: dict[int, tuple[object, ...]] = {}
    for bucket, points in buckets.items():
        values = [(v, s) for s, v in points if v is not None]
        low = min(values) if values else (None, None)
        high = max(values, key=lambda vs: (vs[0], -vs[1])) if values else (None, None)
        last = max(points)
        expected[bucket] = (low[0], low[1], high[0], high[1], last[1], last[0], len(points))
    return expected


def stored(series_id: int, level: int) -> dict[int, tuple[object, ...]]:
    rows = MetricRollup.objects.filter(series_id=series_id, level=level).values_list(
        "bucket", "min", "min_step", "max", "max_step", "last", "last_step", "count"
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def write(series_id: int, points: Sequence[tuple[int, float | None]], *, may_repeat: bool) -> None:
    with transaction.atomic():
        write_metric_points([(series_id, step, value, NOW) for step, value in points], may_repeat=may_repeat)


def test_rollups_equal_brute_force_over_random_series_and_after_a_resume(owner: User) -> None:
    rng = random.Random(7)
    run = Run.objects.create(name="r", owner=owner, program="scripted", params={})
    series = MetricSeries.objects.create(run=run, key="loss")
    steps = sorted(rng.sample(range(5_000), 3_000))
    first = [
        (step, rng.choice([None, rng.uniform(-1, 1)]) if step % 97 == 0 else rng.uniform(-1, 1))
        for step in steps
    ]
    for start in range(0, len(first), 700):  # several batches, as a supervisor writes them
        write(series.pk, first[start : start + 700], may_repeat=False)
    # A duplicate step in a first attempt (an evaluation logged twice): merged, not a failure.
    write(series.pk, [(steps[10], 5.0), (6_000, 1.0)], may_repeat=False)
    # The resume: rewrites steps 1,000.. (lower and higher values) and goes on.
    resumed = [(step, rng.uniform(-0.5, 0.5)) for step in range(1_000, 7_000, 3)]
    write(series.pk, resumed, may_repeat=True)
    for level in (rollups.BASE_LEVEL, rollups.BASE_LEVEL + 3, 12, 13, rollups.TOP_LEVEL):
        assert stored(series.pk, level) == brute(series.pk, level), level


def test_a_downsampled_read_keeps_a_spike_and_stays_within_bounds(owner: User) -> None:
    run = Run.objects.create(name="r", owner=owner, program="scripted", params={})
    series = MetricSeries.objects.create(run=run, key="loss")
    points = [(step, 1.0) for step in range(50_000)]
    points[31_337] = (31_337, 1_000.0)
    write(series.pk, points, may_repeat=False)
    got = selectors.metric_points(run.pk, "loss", 1_000)
    assert 250 <= len(got) <= 1_000
    assert selectors.SeriesPoint(31_337, 1_000.0) in got
    chart = selectors.chart_series(run, ["loss"], 1_000)[0]
    assert 500 <= len(chart.steps) <= 1_000
    assert max(value for value in chart.high or [] if value is not None) == 1_000.0


def test_points_copied_as_text_read_back_exactly_and_a_step_twice_in_one_batch_keeps_the_last(
    owner: User,
) -> None:
    run = Run.objects.create(name="r", owner=owner, program="scripted", params={})
    series = MetricSeries.objects.create(run=run, key="loss")
    odd = [(0, 0.1), (1, -0.0), (2, 1e-310), (3, 1.7976931348623157e308), (4, None), (5, 2.5e-7)]
    write(series.pk, odd, may_repeat=False)
    # The same step twice in a first attempt's batch: the direct COPY refuses it, the merge keeps the last.
    write(series.pk, [(6, 1.0), (7, 3.0), (6, 2.0)], may_repeat=False)
    got = dict(MetricPoint.objects.filter(series=series).values_list("step", "value"))
    assert got == {**dict(odd), 6: 2.0, 7: 3.0}
    assert stored(series.pk, rollups.BASE_LEVEL) == brute(series.pk, rollups.BASE_LEVEL)


def test_points_formatted_by_the_reader_are_copied_and_a_repeated_step_falls_back_to_the_merge(
    owner: User,
) -> None:
    run = Run.objects.create(name="r", owner=owner, program="scripted", params={})
    cache: dict[str, int] = {}
    first = [("a", step, step / 4, NOW) for step in range(40)] + [("b", 3, None, NOW)]
    with transaction.atomic():
        write_batch_points(run.pk, first, point_texts(first), cache, may_repeat=False)
    # Step 39 of "a" again, beside new steps: the COPY of the texts is refused and rolled back,
    # the rows are merged instead (the last value of a step wins).
    again = [("a", 39, 9.0, NOW), ("a", 40, 10.0, NOW)]
    with transaction.atomic():
        write_batch_points(run.pk, again, point_texts(again), cache, may_repeat=False)
    a, b = cache["a"], cache["b"]
    got = dict(MetricPoint.objects.filter(series_id=a).values_list("step", "value"))
    assert got == {**{step: step / 4 for step in range(39)}, 39: 9.0, 40: 10.0}
    assert list(MetricPoint.objects.filter(series_id=b).values_list("step", "value")) == [(3, None)]
    for series_id in (a, b):
        for level in (rollups.BASE_LEVEL, rollups.BASE_LEVEL + 1, rollups.TOP_LEVEL):
            assert stored(series_id, level) == brute(series_id, level), (series_id, level)
