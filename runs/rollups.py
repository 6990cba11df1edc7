"""Metric rollups: min, max, last, first, sum and count per power-of-two step bucket.

Written in the same transaction as the points (runs/ingest.py), so a chart of any series, cold or
warm, and the exact min/max read of `runs.selectors` read at most a few thousand rollup rows, never
the points. Level L holds buckets of 2**L steps (`bucket = step >> L`), for L in BASE_LEVEL ..
TOP_LEVEL; below BASE_LEVEL a read groups the points themselves (at most 2**BASE_LEVEL per bucket
asked for, so still bounded).

How a batch updates them: the base-level buckets its points touch are recomputed from the points
table (not merged with the batch's values), and every level above from the two child buckets
below it. Recomputing, rather than folding the new values in, is what keeps a step rewritten after
a resume from leaving a stale minimum or maximum in its bucket; it costs one indexed range read
of at most 2**BASE_LEVEL points per touched base bucket, and two rollup rows per touched bucket
above. Postgres only: SQLite (standalone mode) has no rollups and groups the points on read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection

from runs.models import MetricPoint, MetricRollup

BASE_LEVEL = 4  # 16 steps: rollup rows are 1/8 of the points (1/16 + 1/32 + ...)
TOP_LEVEL = 40  # 2**40 steps; a series beyond that is charted from its points

_COLUMNS = (
    "series_id, level, bucket, min, min_step, max, max_step, last, last_step, first_step, first_ts, "
    "sum, n_values, count"
)
_UPDATE = ", ".join(
    f"{c} = excluded.{c}"
    for c in (
        "min",
        "min_step",
        "max",
        "max_step",
        "last",
        "last_step",
        "first_step",
        "first_ts",
        "sum",
        "n_values",
        "count",
    )
)
# (lo, hi): [value, step] pairs, so min/max find the extreme and its step in one pass (the lowest
# step on a tie); la: [step, value], the value at the highest step.
_OUT = "lo[1], lo[2]::bigint, hi[1], hi[2]::bigint, la[2], la[1]::bigint, fs, fts, sm, nv, n"
_POINT_AGG = (
    "min(ARRAY[p.value, p.step::float8]) FILTER (WHERE p.value IS NOT NULL) AS lo, "
    "max(ARRAY[p.value, p.step::float8]) FILTER (WHERE p.value IS NOT NULL) AS hi, "
    "max(ARRAY[p.step::float8, p.value]) AS la, min(p.step) AS fs, min(p.ts) AS fts, "
    "sum(p.value) AS sm, count(p.value) AS nv, count(*) AS n"
)
_ROLLUP_AGG = (
    "min(ARRAY[r.min, r.min_step::float8]) FILTER (WHERE r.min IS NOT NULL) AS lo, "
    "max(ARRAY[r.max, r.max_step::float8]) FILTER (WHERE r.max IS NOT NULL) AS hi, "
    "max(ARRAY[r.last_step::float8, r.last]) AS la, min(r.first_step) AS fs, min(r.first_ts) AS fts, "
    "sum(r.sum) AS sm, sum(r.n_values) AS nv, sum(r.count) AS n"
)


def _tables() -> tuple[str, str, str]:
    rollups = MetricRollup._meta.db_table
    upsert = f"ON CONFLICT (series_id, level, bucket) DO UPDATE SET {_UPDATE}"
    return MetricPoint._meta.db_table, rollups, upsert


# Incremental: one row per touched bucket, each an index probe (LATERAL), so a batch costs what it
# touches, never a scan of the table (a hash join over the unnested arrays would read it all).
def _base_sql() -> str:
    points, rollups, upsert = _tables()
    return (
        f"INSERT INTO {rollups} ({_COLUMNS}) SELECT t.s, {BASE_LEVEL}, t.b, {_OUT} "  # noqa: S608
        "FROM unnest(%(s)s::bigint[], %(b)s::bigint[]) AS t(s, b) CROSS JOIN LATERAL ("
        f"SELECT {_POINT_AGG} FROM {points} p WHERE p.series_id = t.s "
        f"AND p.step BETWEEN t.b << {BASE_LEVEL} AND ((t.b + 1) << {BASE_LEVEL}) - 1) agg "
        f"WHERE agg.n > 0 {upsert}"
    )


def _upper_sql() -> str:
    _, rollups, upsert = _tables()
    return (
        f"INSERT INTO {rollups} ({_COLUMNS}) SELECT t.s, %(child)s + 1, t.b, {_OUT} "  # noqa: S608
        "FROM unnest(%(s)s::bigint[], %(b)s::bigint[]) AS t(s, b) CROSS JOIN LATERAL ("
        f"SELECT {_ROLLUP_AGG} FROM {rollups} r WHERE r.series_id = t.s AND r.level = %(child)s "
        f"AND r.bucket BETWEEN t.b * 2 AND t.b * 2 + 1) agg WHERE agg.n > 0 {upsert}"
    )


def update_rollups(touched: Iterable[Sequence[Any]]) -> None:
    """Recompute every level's buckets over the points just written (Postgres): `touched` holds
    (series, step) pairs or point rows that start with them."""
    if connection.vendor != "postgresql":
        return
    update_rollup_buckets({(row[0], row[1] >> BASE_LEVEL) for row in touched})


def update_rollup_buckets(level_set: set[tuple[int, int]]) -> None:
    """Recompute the (series, base-level bucket) pairs given, and every level above them."""
    if not level_set or connection.vendor != "postgresql":
        return
    levels: list[dict[str, Any]] = []
    series_ids, buckets = _arrays(level_set)
    base = {"s": series_ids, "b": buckets}
    for level in range(BASE_LEVEL + 1, TOP_LEVEL + 1):
        level_set = {(series, bucket >> 1) for series, bucket in level_set}
        series_ids, buckets = _arrays(level_set)
        levels.append({"s": series_ids, "b": buckets, "child": level - 1})
    with connection.cursor() as cursor:
        cursor.execute(_base_sql(), base)
        # One pipelined round trip for every level above; each reads the rows the one before wrote.
        cursor.executemany(_upper_sql(), levels)


def _arrays(pairs: set[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ordered = sorted(pairs)
    return [series for series, _ in ordered], [bucket for _, bucket in ordered]


def rebuild_all() -> None:
    """Every series' rollups from its points: the migration's backfill, one pass per level (a
    full read of the points table: minutes on a database of a billion points)."""
    if connection.vendor != "postgresql":
        return
    points, rollups, upsert = _tables()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {rollups}")  # noqa: S608  # nosemgrep: raw-sql-string-formatting
        cursor.execute(  # nosemgrep: raw-sql-string-formatting - own constants
            f"INSERT INTO {rollups} ({_COLUMNS}) SELECT s, {BASE_LEVEL}, b, {_OUT} FROM ("  # noqa: S608
            f"SELECT p.series_id AS s, p.step >> {BASE_LEVEL} AS b, {_POINT_AGG} FROM {points} p "
            f"GROUP BY 1, 2) agg {upsert}"
        )
        for level in range(BASE_LEVEL, TOP_LEVEL):
            cursor.execute(  # nosemgrep: raw-sql-string-formatting - own constants
                f"INSERT INTO {rollups} ({_COLUMNS}) SELECT s, %s, b, {_OUT} FROM ("  # noqa: S608
                f"SELECT r.series_id AS s, r.bucket >> 1 AS b, {_ROLLUP_AGG} FROM {rollups} r "
                f"WHERE r.level = %s GROUP BY 1, 2) agg {upsert}",
                [level + 1, level],
            )


def level_for(low_step: int, high_step: int, buckets: int) -> int:
    """The smallest level whose aligned buckets over [low, high] number at most `buckets`: so
    between buckets/2 and buckets of them, where the data has them."""
    level = 0
    while (high_step >> level) - (low_step >> level) + 1 > buckets:
        level += 1
    return level
