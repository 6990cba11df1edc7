"""Reads of runs and their streams. `access_*` fetches with the permission check."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Prefetch, QuerySet
from django.http import Http404

from runs.models import Artifact, LogLine, MetricPoint, MetricSeries, Run, RunAttempt, RunStatus

MAX_LOG_PAGE = 5_000
MAX_RAW_POINTS = 100_000


def visible_runs(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Run]:
    """The one place that decides which runs a user may see."""
    if not user.is_authenticated:
        return Run.objects.none()
    return Run.objects.all()


def access_run(user: AbstractBaseUser | AnonymousUser, run_id: int) -> Run:
    """The run, or 404 for one that does not exist or the user may not see (same answer)."""
    run = visible_runs(user).select_related("owner").filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    return run


def access_artifact(user: AbstractBaseUser | AnonymousUser, artifact_id: int) -> Artifact:
    artifact = Artifact.objects.filter(pk=artifact_id, run__in=visible_runs(user)).first()
    if artifact is None:
        raise Http404("No such artifact.")
    return artifact


def dead_letters() -> QuerySet[Run]:
    return (
        Run.objects.filter(status=RunStatus.DEAD, discarded_at__isnull=True)
        .select_related("owner")
        .prefetch_related(Prefetch("attempts", queryset=RunAttempt.objects.order_by("number")))
    )


def log_lines_after(run_id: int, after: int, limit: int = 1_000) -> list[LogLine]:
    limit = max(1, min(limit, MAX_LOG_PAGE))
    return list(LogLine.objects.filter(run_id=run_id, seq__gt=after).order_by("seq")[:limit])


def metric_keys(run_id: int) -> list[str]:
    return list(MetricSeries.objects.filter(run_id=run_id).order_by("key").values_list("key", flat=True))


@dataclass(frozen=True)
class SeriesPoint:
    step: int
    value: float | None


def metric_points(run_id: int, key: str, max_points: int | None) -> list[SeriesPoint]:
    """Points of one series in step order; above `max_points`, a min/max per bucket.

    Keeping both the minimum and the maximum of every bucket (at their own steps) means a spike
    survives downsampling, which averaging or picking every n-th point would hide.
    """
    series_id = MetricSeries.objects.filter(run_id=run_id, key=key).values_list("pk", flat=True).first()
    if series_id is None:
        return []
    cap = MAX_RAW_POINTS if max_points is None else max_points
    raw = list(
        MetricPoint.objects.filter(series_id=series_id)
        .order_by("step")
        .values_list("step", "value")[: cap + 1]
    )
    if len(raw) <= cap:
        return [SeriesPoint(step, value) for step, value in raw]
    if max_points is None:
        return [SeriesPoint(step, value) for step, value in raw[:cap]]
    return _downsample(series_id, max_points)


def _downsample(series_id: int, max_points: int) -> list[SeriesPoint]:
    buckets = max(1, max_points // 2)
    bounds = MetricPoint.objects.filter(series_id=series_id).order_by("step").values_list("step", flat=True)
    low = bounds.first()
    high = bounds.last()
    if low is None or high is None:
        return []
    span = high - low + 1
    table = MetricPoint._meta.db_table
    picked: dict[int, float] = {}
    if connection.vendor == "postgresql":
        # min/max over [value, step] arrays find each bucket's extreme and its step in one pass.
        sql = (
            f"SELECT min(ARRAY[value, step::float8]), max(ARRAY[value, step::float8]) FROM {table} "  # noqa: S608
            "WHERE series_id = %s AND value IS NOT NULL GROUP BY (step - %s) * %s / %s"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [series_id, low, buckets, span])
            for low_pair, high_pair in cursor.fetchall():
                for value, step in (low_pair, high_pair):
                    picked[int(step)] = float(value)
    else:
        extremes: dict[int, tuple[tuple[float, int], tuple[float, int]]] = {}
        rows = MetricPoint.objects.filter(series_id=series_id, value__isnull=False).values_list(
            "step", "value"
        )
        for step, value in rows.iterator(chunk_size=10_000):
            assert value is not None  # filtered above
            bucket = (step - low) * buckets // span
            current = extremes.get(bucket)
            if current is None:
                extremes[bucket] = ((value, step), (value, step))
            else:
                extremes[bucket] = (min(current[0], (value, step)), max(current[1], (value, step)))
        for (min_value, min_step), (max_value, max_step) in extremes.values():
            picked[min_step] = min_value
            picked[max_step] = max_value
    return [SeriesPoint(step, picked[step]) for step in sorted(picked)]


def run_artifacts(run_id: int) -> list[Artifact]:
    return list(Artifact.objects.filter(run_id=run_id).order_by("name"))
