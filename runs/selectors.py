"""Reads of runs and their streams. `access_*` fetches with the permission check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.models import Avg, F, Max, Min, OuterRef, Prefetch, QuerySet, Subquery
from django.http import Http404

from accounts.policy import Action, Principal, restrict
from runs import lifecycle
from runs.models import Artifact, LogLine, MetricPoint, MetricSeries, Run, RunAttempt, RunStatus

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


# -- chart series: min/max/mean per aligned bucket, cached by chunk ------------------------------

CHART_CHUNK_BUCKETS = 32  # buckets per cached chunk: a live run recomputes at most one chunk
CHART_CACHE_SECONDS = 24 * 3600
_CHART_CACHE_VERSION = 1


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


# (bucket, first step, first ts in ms, mean, min, max)
_Bucket = tuple[int, int, float, float | None, float | None, float | None]


def chart_series(run: Run, keys: list[str] | None, max_points: int) -> list[ChartSeries]:
    """The run's series (all, or those named), each at most `max_points` values wide.

    Downsampling groups steps into buckets aligned to a power of two (`step >> shift`), so a
    bucket's content never depends on where the series currently ends. That makes every bucket
    below the series' last step final, and chunks of them are cached: a live chart request reads
    only the newest chunk from the database, and a finished run's chart comes from the cache.

    Queries: one for every series' extent, one for the points of all short series, and one per
    long series whose chunks are not all cached (so one per live series, none once finished).
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
    buckets = max(1, max_points // 2)
    shift = 0
    while (high_step >> shift) - (low_step >> shift) + 1 > buckets:
        shift += 1
    chunk_shift = shift + CHART_CHUNK_BUCKETS.bit_length() - 1
    chunks = range(low_step >> chunk_shift, (high_step >> chunk_shift) + 1)
    # The creation time tells apart runs that reuse an id (a database restored or recreated).
    prefix = f"cp:chart:{_CHART_CACHE_VERSION}:{series_id}:{run.created_at.timestamp()}:{run.attempt}:{shift}"
    cached: dict[str, list[_Bucket]] = cache.get_many([f"{prefix}:{chunk}" for chunk in chunks])
    missing = [chunk for chunk in chunks if f"{prefix}:{chunk}" not in cached]
    rows: dict[int, list[_Bucket]] = {
        chunk: cached[f"{prefix}:{chunk}"] for chunk in chunks if chunk not in missing
    }
    if missing:
        first, last = missing[0], missing[-1]
        computed = _buckets(series_id, shift, first << chunk_shift, ((last + 1) << chunk_shift) - 1)
        fresh: dict[int, list[_Bucket]] = {chunk: [] for chunk in range(first, last + 1)}
        for bucket in computed:
            fresh[bucket[0] >> (chunk_shift - shift)].append(bucket)
        final: dict[str, list[_Bucket]] = {}
        for chunk, content in fresh.items():
            rows[chunk] = content
            # A chunk is final once the series has moved past it (or the run has ended); a run
            # that resumes gets a new attempt number, hence new keys.
            if ((chunk + 1) << chunk_shift) <= high_step or lifecycle.is_terminal(run):
                final[f"{prefix}:{chunk}"] = content
        if final:
            cache.set_many(final, CHART_CACHE_SECONDS)
    ordered = [bucket for chunk in chunks for bucket in rows.get(chunk, [])]
    return ChartSeries(
        key=key,
        bucket_steps=1 << shift,
        steps=[bucket[1] for bucket in ordered],
        ts=[bucket[2] for bucket in ordered],
        values=[bucket[3] for bucket in ordered],
        low=[bucket[4] for bucket in ordered],
        high=[bucket[5] for bucket in ordered],
    )


def _buckets(series_id: int, shift: int, first_step: int, last_step: int) -> list[_Bucket]:
    rows = (
        MetricPoint.objects.filter(series_id=series_id, step__gte=first_step, step__lte=last_step)
        .annotate(bucket=F("step").bitrightshift(shift))
        .values("bucket")
        .annotate(
            first_step=Min("step"),
            first_ts=Min("ts"),
            mean=Avg("value"),
            low=Min("value"),
            high=Max("value"),
        )
        # No ORDER BY: Postgres cannot tell how few groups there are and would sort all the
        # points (on disk, past work_mem) before grouping; hashing them is 2-3x faster.
        .order_by()
        .values_list("bucket", "first_step", "first_ts", "mean", "low", "high")
    )
    return sorted(
        (bucket, step, ts.timestamp() * 1000, mean, low, high) for bucket, step, ts, mean, low, high in rows
    )


def dispatch_record(run_id: int) -> tuple[str, datetime | None]:
    """The run's queue and when its message was sent (None: dispatched by hand), for the
    dispatch-latency metric; a database outage gives ("", None): a metric never fails a run."""
    try:
        row = Run.objects.filter(pk=run_id).values_list("queue", "enqueued_at").first()
    except DatabaseError:
        return "", None
    return row if row is not None else ("", None)
