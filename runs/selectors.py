"""Reads of runs and their streams. `access_*` fetches with the permission check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection
from django.db.models import OuterRef, Prefetch, QuerySet, Subquery
from django.http import Http404

from accounts.policy import Action, Principal, restrict
from runs import rollups
from runs.models import Artifact, LogLine, MetricPoint, MetricRollup, MetricSeries, Run, RunAttempt, RunStatus

MAX_LOG_PAGE = 5_000
MAX_RAW_POINTS = 100_000


def visible_runs(principal: Principal) -> QuerySet[Run]:
    """The runs `principal` may see: `accounts.policy.restrict` with `run.read` (the rule lives there)."""
    return restrict(principal, Action.RUN_READ, Run.objects.all())


def access_run(principal: Principal, run_id: int) -> Run:
    """The run, or 404 for one that does not exist or the caller may not see (same answer).
    Acting on it is checked on the row afterwards (`decide`: a 403)."""
    run = visible_runs(principal).select_related("owner").filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    return run


def access_artifact(principal: Principal, artifact_id: int) -> Artifact:
    """The artifact, seen through its run (`runs.artifact`'s row rule), or 404."""
    artifact = restrict(principal, Action.RUN_READ, Artifact.objects.all()).filter(pk=artifact_id).first()
    if artifact is None:
        raise Http404("No such artifact.")
    return artifact


def dead_letters(principal: Principal) -> QuerySet[Run]:
    """The dead letters `principal` may handle (every one for an admin with the admin scope)."""
    dead = Run.objects.filter(status=RunStatus.DEAD, discarded_at__isnull=True)
    return (
        restrict(principal, Action.DEAD_LETTER_MANAGE, dead)
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


def series_id_for(run_id: int, key: str) -> int | None:
    return MetricSeries.objects.filter(run_id=run_id, key=key).values_list("pk", flat=True).first()


def metric_page(series_id: int, after_step: int, limit: int) -> tuple[list[SeriesPoint], bool]:
    """Up to `limit` points with step > `after_step`, in step order, and whether more follow.

    A keyset page on the (series, step) primary key: a client that follows `after_step = last
    step of the page` sees every point exactly once, even while the run keeps writing."""
    rows = list(
        MetricPoint.objects.filter(series_id=series_id, step__gt=after_step)
        .order_by("step")
        .values_list("step", "value")[: limit + 1]
    )
    return [SeriesPoint(step, value) for step, value in rows[:limit]], len(rows) > limit


def metric_points(run_id: int, key: str, max_points: int | None) -> list[SeriesPoint]:
    """Points of one series in step order; above `max_points`, the min and max of every bucket.

    Keeping both the minimum and the maximum of every bucket (at their own steps) means a spike
    survives downsampling, which averaging or picking every n-th point would hide. Buckets are
    aligned powers of two (at most max_points / 2 of them, so at most max_points points), read
    from the rollups (runs/rollups.py). Without `max_points`: the first MAX_RAW_POINTS points
    (the API pages with `metric_page` instead).
    """
    series_id = series_id_for(run_id, key)
    if series_id is None:
        return []
    cap = MAX_RAW_POINTS if max_points is None else max_points
    raw, more = metric_page(series_id, -1, cap)
    if not more or max_points is None:
        return raw
    extent = _extent(series_id)
    if extent is None:
        return []
    picked: dict[int, float] = {}
    for bucket in _series_buckets(series_id, extent[0], extent[1], max(1, max_points // 2)):
        if bucket.low is not None and bucket.low_step is not None:
            picked[bucket.low_step] = bucket.low
        if bucket.high is not None and bucket.high_step is not None:
            picked[bucket.high_step] = bucket.high
    return [SeriesPoint(step, picked[step]) for step in sorted(picked)]


def _extent(series_id: int) -> tuple[int, int] | None:
    steps = MetricPoint.objects.filter(series_id=series_id).values_list("step", flat=True)
    low = steps.order_by("step").first()
    high = steps.order_by("-step").first()
    return None if low is None or high is None else (low, high)


@dataclass(frozen=True)
class Bucket:
    """One aligned bucket of a series: its first step and time, mean, min and max (with steps)."""

    bucket: int
    first_step: int
    first_ts: float  # epoch milliseconds
    mean: float | None
    low: float | None
    low_step: int | None
    high: float | None
    high_step: int | None


def _series_buckets(series_id: int, low_step: int, high_step: int, buckets: int) -> list[Bucket]:
    """At most `buckets` aligned buckets over the series (between buckets/2 and buckets where the
    data has them): rollup rows when the level is stored, else the points grouped (then at most
    2**BASE_LEVEL points a bucket, so still bounded)."""
    level = rollups.level_for(low_step, high_step, buckets)
    if connection.vendor == "postgresql" and rollups.BASE_LEVEL <= level <= rollups.TOP_LEVEL:
        rows = (
            MetricRollup.objects.filter(
                series_id=series_id,
                level=level,
                bucket__gte=low_step >> level,
                bucket__lte=high_step >> level,
            )
            .order_by("bucket")
            .values_list(
                "bucket", "first_step", "first_ts", "sum", "n_values", "min", "min_step", "max", "max_step"
            )
        )
        return [
            Bucket(b, fs, ts.timestamp() * 1000, sm / nv if nv and sm is not None else None, lo, los, hi, his)
            for b, fs, ts, sm, nv, lo, los, hi, his in rows
        ]
    return _point_buckets(series_id, level, low_step, high_step)


def _point_buckets(series_id: int, shift: int, first_step: int, last_step: int) -> list[Bucket]:
    extremes: dict[int, list[Any]] = {}
    rows = MetricPoint.objects.filter(series_id=series_id, step__gte=first_step, step__lte=last_step)
    columns = rows.order_by("step").values_list("step", "ts", "value")
    for step, ts, value in columns.iterator(chunk_size=10_000):
        bucket = step >> shift
        entry = extremes.get(bucket)
        if entry is None:
            # first step, first ts, sum, count, (min, step), (max, step)
            entry = extremes[bucket] = [step, ts.timestamp() * 1000, 0.0, 0, None, None]
        if value is not None:
            entry[2] += value
            entry[3] += 1
            if entry[4] is None or value < entry[4][0]:
                entry[4] = (value, step)
            if entry[5] is None or value > entry[5][0]:
                entry[5] = (value, step)
    return [
        Bucket(
            bucket,
            fs,
            ts,
            sm / n if n else None,
            lo[0] if lo else None,
            lo[1] if lo else None,
            hi[0] if hi else None,
            hi[1] if hi else None,
        )
        for bucket, (fs, ts, sm, n, lo, hi) in sorted(extremes.items())
    ]


def run_artifacts(run_id: int) -> list[Artifact]:
    return list(Artifact.objects.filter(run_id=run_id).order_by("name"))


# -- dashboard reads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFilters:
    """What a runs list may be narrowed by; empty fields do not filter."""

    statuses: tuple[str, ...] = ()
    owner: str = ""  # a username
    program: str = ""
    text: str = ""  # a case-insensitive substring of the run's name


def filter_runs(queryset: QuerySet[Run], filters: RunFilters) -> QuerySet[Run]:
    # status and owner are served by the (status, -id) and (owner, -id) indexes; the name search
    # is a scan of the matching rows (a pg_trgm index would serve it past ~100k runs).
    if filters.statuses:
        queryset = queryset.filter(status__in=filters.statuses)
    if filters.owner:
        queryset = queryset.filter(owner__username=filters.owner)
    if filters.program:
        queryset = queryset.filter(program=filters.program)
    if filters.text:
        queryset = queryset.filter(name__icontains=filters.text)
    return queryset


def run_states(principal: Principal, run_ids: list[int]) -> list[Run]:
    """The live fields of a page of runs (what a list polls): one primary-key lookup."""
    return list(
        visible_runs(principal)
        .filter(pk__in=run_ids)
        .only(
            "id",
            "status",
            "attempt",
            "phase",
            "progress_step",
            "progress_total",
            "started_at",
            "finished_at",
            "updated_at",
            # Why a queued run waits (runs.launch_hooks.waiting_reasons): the stored reason, or
            # its place among the runs of its pool ahead of it.
            "waiting_reason",
            "queue",
            "resources",
            "priority",
            "created_at",
        )
        .order_by("-id")
    )


def latest_run_id(principal: Principal) -> int | None:
    return visible_runs(principal).order_by("-id").values_list("pk", flat=True).first()


def log_lines_before(run_id: int, before: int | None, limit: int = 1_000) -> list[LogLine]:
    """The `limit` lines just below seq `before` (the newest lines when None), in seq order.

    A backward range scan of the (run, seq) primary key, so opening a million-line log at its
    tail costs the same as opening a short one.
    """
    limit = max(1, min(limit, MAX_LOG_PAGE))
    lines = LogLine.objects.filter(run_id=run_id)
    if before is not None:
        lines = lines.filter(seq__lt=before)
    page = list(lines.order_by("-seq")[:limit])
    page.reverse()
    return page


def log_rows_after(run_id: int, after: int, up_to: int, limit: int) -> list[tuple[int, datetime, str, str]]:
    """(seq, ts, stream, line) tuples of the lines in (after, up_to], for bulk export: plain
    tuples cost a third of what model instances do over a million lines."""
    return list(
        LogLine.objects.filter(run_id=run_id, seq__gt=after, seq__lte=up_to)
        .order_by("seq")
        .values_list("seq", "ts", "stream", "line")[:limit]
    )


def has_log_lines_before(run_id: int, seq: int) -> bool:
    return LogLine.objects.filter(run_id=run_id, seq__lt=seq).exists()


# -- chart series: min/max/mean per aligned bucket, read from the rollups -------------------------


@dataclass(frozen=True)
class ChartSeries:
    """A series shaped for a chart, in columns.

    `bucket_steps` is 1 for raw points (then `low` and `high` are None); above that, each row is
    one bucket of `bucket_steps` steps: its first step and time, the mean, and the minimum and
    maximum, so the chart can draw a band that keeps every spike visible.
    """

    key: str
    bucket_steps: int
    steps: list[int]
    ts: list[float]  # epoch milliseconds
    values: list[float | None]
    low: list[float | None] | None
    high: list[float | None] | None


def chart_series(run: Run, keys: list[str] | None, max_points: int) -> list[ChartSeries]:
    """The run's series (all, or those named), each at most `max_points` values wide.

    Downsampling groups steps into buckets aligned to a power of two (`step >> level`): between
    max_points/2 and max_points of them, read from the rollups kept as points are written
    (runs/rollups.py), so a chart of a million-point series reads at most max_points rows, cold
    or warm, live or finished.

    Queries: one for every series' extent, one for the points of all short series, and one per
    long series (its rollup rows).
    """
    by_step = MetricPoint.objects.filter(series_id=OuterRef("pk")).order_by("step").values("step")
    series = MetricSeries.objects.filter(run_id=run.pk)
    if keys is not None:
        series = series.filter(key__in=keys)
    # Correlated subqueries on the (series, step) primary key: each is an index probe, where a
    # GROUP BY over the run's points would read every one of them.
    extents = series.annotate(
        low=Subquery(by_step[:1]),
        high=Subquery(by_step.order_by("-step")[:1]),
        beyond=Subquery(by_step[max_points : max_points + 1]),
    ).order_by("key")
    found: list[tuple[int, str, int | None, int | None, int | None]] = list(
        extents.values_list("pk", "key", "low", "high", "beyond")
    )
    raw_ids = [series_id for series_id, _, low, _, beyond in found if low is not None and beyond is None]
    raw: dict[int, list[tuple[int, datetime, float | None]]] = {series_id: [] for series_id in raw_ids}
    if raw_ids:
        rows = MetricPoint.objects.filter(series_id__in=raw_ids).order_by("series_id", "step")
        for series_id, step, ts, value in rows.values_list("series_id", "step", "ts", "value"):
            raw[series_id].append((step, ts, value))
    charts = []
    for series_id, key, low, high, beyond in found:
        if low is None or high is None or beyond is None:
            points = raw.get(series_id, [])
            charts.append(
                ChartSeries(
                    key=key,
                    bucket_steps=1,
                    steps=[step for step, _, _ in points],
                    ts=[ts.timestamp() * 1000 for _, ts, _ in points],
                    values=[value for _, _, value in points],
                    low=None,
                    high=None,
                )
            )
        else:
            charts.append(_bucketed(run, series_id, key, low, high, max_points))
    return charts


def _bucketed(
    run: Run, series_id: int, key: str, low_step: int, high_step: int, max_points: int
) -> ChartSeries:
    # Rollups (runs/rollups.py): at most max_points rows, cold or warm, whatever the series' length.
    ordered = _series_buckets(series_id, low_step, high_step, max(1, max_points))
    shift = rollups.level_for(low_step, high_step, max(1, max_points))
    return ChartSeries(
        key=key,
        bucket_steps=1 << shift,
        steps=[bucket.first_step for bucket in ordered],
        ts=[bucket.first_ts for bucket in ordered],
        values=[bucket.mean for bucket in ordered],
        low=[bucket.low for bucket in ordered],
        high=[bucket.high for bucket in ordered],
    )


def dispatch_record(run_id: int) -> tuple[str, datetime | None]:
    """The run's queue and when its message was sent (None: dispatched by hand), for the
    dispatch-latency metric; a database outage gives ("", None): a metric never fails a run."""
    try:
        row = Run.objects.filter(pk=run_id).values_list("queue", "enqueued_at").first()
    except DatabaseError:
        return "", None
    return row if row is not None else ("", None)


@dataclass(frozen=True)
class LaunchRecord:
    created_at: datetime  # the launch: the origin of the run's system-metric steps
    pool: str  # the fleet pool it asked for ("default" when none)
    priority: int


def launch_record(run_id: int) -> LaunchRecord | None:
    """When and how the run was launched, for the supervisor's metrics; None when the row is gone
    or the database does not answer: a metric never fails a run."""
    try:
        row = Run.objects.filter(pk=run_id).values_list("created_at", "resources", "priority").first()
    except DatabaseError:
        return None
    if row is None:
        return None
    created_at, resources, priority = row
    pool = (resources.get("pool") if isinstance(resources, dict) else None) or "default"
    return LaunchRecord(created_at, str(pool), int(priority))
