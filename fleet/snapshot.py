"""What one scheduler pass reads, in as few queries as the rules allow (fleet.scheduler).

- The fleet: live workers with every device and whether it is reserved, in one query.
- GPUs each owner holds, in one aggregate over the reservations.
- The queue: the runs waiting for admission, in chunks (`queue_chunks`: the pass stops reading
  once every pool is served), in admission order computed by the database
  (effective priority with aging, then age, then id: the rule of fleet.placement.order), with the
  pool and GPU count taken out of `resources` in SQL, so Python parses no JSON and sorts nothing.
  The rows become `Candidate`s (tuples: cheap to build 10,000 of). `created_at` is not read: the
  order is the database's, and converting 10,000 timestamps was a third of the pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, Q

from fleet.agent import lost_before
from fleet.models import DeviceKind, Reservation, Worker
from fleet.placement import AGING_CAP, Candidate, WorkerRoom
from runs.lifecycle import LIVE_STATUSES
from runs.models import Run, RunStatus

# The columns the pass needs, then the stored reason (owners' names are read apart). `resources` is a
# dict; a pool that is missing or empty is "default", a GPU count that is not an integer is 0
# (fleet.scheduler.requested, the same rule for one run).
REQUESTED_POOL = "COALESCE(NULLIF(r.resources ->> 'pool', ''), 'default')"
REQUESTED_GPUS = """CASE WHEN jsonb_typeof(r.resources -> 'gpus') = 'number'
                 AND (r.resources ->> 'gpus') ~ '^-?[0-9]{1,9}$'
            THEN (r.resources ->> 'gpus')::integer ELSE 0 END"""
# A gang's node count (fleet.scheduler.requested_nodes): 1 unless a positive integer.
REQUESTED_NODES = """CASE WHEN jsonb_typeof(r.resources -> 'nodes') = 'number'
                 AND (r.resources ->> 'nodes') ~ '^[0-9]{1,4}$'
            THEN GREATEST(1, (r.resources ->> 'nodes')::integer) ELSE 1 END"""
# Waiting for admission and due (Postgres; fleet.tail selects the same runs).
QUEUE_FILTER = "r.status = 'queued' AND r.queue = '' AND (r.not_before IS NULL OR r.not_before <= %(now)s)"
EFFECTIVE_PRIORITY = """r.priority + LEAST(%(cap)s,
    FLOOR(GREATEST(0.0, EXTRACT(EPOCH FROM (%(now)s - r.created_at))::float8)
          / (%(aging)s * 60.0))::integer)"""
# Only this module's constants are formatted into the SQL (S608 below).
_POSTGRES_QUEUE = f"""
SELECT r.id, r.owner_id, {REQUESTED_POOL} AS pool, {REQUESTED_GPUS} AS gpus,
       {REQUESTED_NODES} AS nodes, r.max_duration_seconds, r.priority, r.request_id, r.waiting_reason
FROM runs_run r
WHERE {QUEUE_FILTER}
ORDER BY {EFFECTIVE_PRIORITY} DESC, r.created_at, r.id
"""  # noqa: S608
# One chunk of the same order: the next `limit` runs after the last one read (keyset: effective
# priority, created_at, id; empty `after` = from the head). The database keeps only the top
# `limit` while it scans (a top-N heap, not a sort of the whole queue) and the JSON of
# `resources` is read for those only: the LIMIT subquery is evaluated before the outer columns.
# nosemgrep: raw-sql-string-formatting - only this module's constants; values are %(...)s parameters
_POSTGRES_CHUNK = f"""
SELECT r.id, r.owner_id, {REQUESTED_POOL} AS pool, {REQUESTED_GPUS} AS gpus,
       {REQUESTED_NODES} AS nodes, r.max_duration_seconds, r.priority, r.request_id, r.waiting_reason,
       r.effective, r.created_at
FROM (SELECT r.id, r.owner_id, r.resources, r.priority, r.request_id, r.waiting_reason, r.created_at,
             r.max_duration_seconds, {EFFECTIVE_PRIORITY} AS effective
      FROM runs_run r
      WHERE {QUEUE_FILTER}
        AND (%(after)s = 0 OR {EFFECTIVE_PRIORITY} < %(effective)s
             OR ({EFFECTIVE_PRIORITY} = %(effective)s AND (r.created_at, r.id) > (%(created)s, %(after)s)))
      ORDER BY effective DESC, r.created_at, r.id
      LIMIT %(limit)s) r
ORDER BY r.effective DESC, r.created_at, r.id
"""  # noqa: S608
# SQLite (standalone): the same rule in its dialect; CAST truncates, which is FLOOR for the
# non-negative ages it is given.
_SQLITE_QUEUE = """
SELECT r.id, r.owner_id,
       COALESCE(NULLIF(json_extract(r.resources, '$.pool'), ''), 'default') AS pool,
       CASE WHEN json_type(r.resources, '$.gpus') = 'integer'
            THEN json_extract(r.resources, '$.gpus') ELSE 0 END AS gpus,
       CASE WHEN json_type(r.resources, '$.nodes') = 'integer'
            THEN MAX(1, json_extract(r.resources, '$.nodes')) ELSE 1 END AS nodes,
       r.max_duration_seconds, r.priority, r.request_id, r.waiting_reason
FROM runs_run r
WHERE r.status = 'queued' AND r.queue = '' AND (r.not_before IS NULL OR r.not_before <= %(now)s)
ORDER BY r.priority + MIN(%(cap)s, CAST(MAX(0, (julianday(%(now)s) - julianday(r.created_at)) * 86400.0)
                                        / (%(aging)s * 60.0) AS INTEGER)) DESC,
         r.created_at, r.id
"""


def read_rooms(now: datetime) -> list[WorkerRoom]:
    """Live workers (active or draining) with their devices; free ones listed by index."""
    rows = (
        Worker.objects.filter(heartbeat_at__gte=lost_before(now))
        .order_by("id", "devices__index")
        .values_list(
            "id",
            "name",
            "pool",
            "queue",
            "state",
            "devices__id",
            "devices__index",
            "devices__kind",
            "devices__reservation__id",
            "devices__reservation__run__status",
            "devices__reservation__run__started_at",
            "devices__reservation__run__max_duration_seconds",
        )
    )
    rooms: dict[int, WorkerRoom] = {}
    for worker_id, name, pool, queue, state, device_id, index, kind, reservation_id, *run in rows:
        room = rooms.get(worker_id)
        if room is None:
            room = rooms[worker_id] = WorkerRoom(worker_id, name, pool, queue, state == "active")
        if device_id is None:
            continue  # a worker without devices
        room.total[kind] = room.total.get(kind, 0) + 1
        free = room.free.setdefault(kind, [])
        if reservation_id is None:
            free.append((device_id, index))
        else:
            status, started_at, limit = run
            room.frees_in.setdefault(kind, []).append(_frees_in(now, status, started_at, limit))
    return list(rooms.values())


def _frees_in(now: datetime, status: object, started_at: object, limit: object) -> float | None:
    """Seconds until a reserved device frees at the latest: its run's start (now, for a run
    admitted and not yet started) plus its declared limit; None when it declares none."""
    if not isinstance(limit, int):
        return None
    begun = started_at if status in LIVE_STATUSES and isinstance(started_at, datetime) else now
    return max(0.0, (begun - now).total_seconds() + limit)


def gpus_held() -> dict[int, int]:
    """owner id -> GPUs their runs hold (on any worker: a lost worker's runs hold theirs until
    their leases expire)."""
    rows = (
        Reservation.objects.filter(device__kind=DeviceKind.GPU)
        .values("run__owner_id")
        .annotate(count=Count("id"))
        .values_list("run__owner_id", "count")
    )
    return dict(rows)


def _queue_sql(now: datetime) -> tuple[str, Any]:
    if connection.vendor != "postgresql":
        # SQLite stores naive UTC text: compare like with like.
        return _SQLITE_QUEUE, connection.ops.adapt_datetimefield_value(now)
    return _POSTGRES_QUEUE, now


def queue_owners(now: datetime) -> dict[int, int]:
    """owner id -> how many runs they have waiting for admission (no JSON, no sort: cheap)."""
    rows = (
        Run.objects.filter(status=RunStatus.QUEUED, queue="")
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .values("owner_id")
        .annotate(count=Count("id"))
        .values_list("owner_id", "count")
    )
    return dict(rows)


def _candidates(rows: list[tuple[Any, ...]], names: dict[int, str]) -> list[Candidate]:
    return [
        Candidate(
            run_id, owner_id, names.get(owner_id, ""), pool, gpus, priority, None, request_id, nodes, limit
        )
        for run_id, owner_id, pool, gpus, nodes, limit, priority, request_id, *_ in rows
    ]


def queue_chunks(
    now: datetime, aging_minutes: float, names: dict[int, str], size: int
) -> Iterator[tuple[list[Candidate], dict[int, str]]]:
    """The queue in admission order, `size` runs at a time, with their current waiting reasons;
    stop iterating to stop reading. On Postgres each chunk is one query (_POSTGRES_CHUNK): rows
    after the chunk are neither sorted, sent nor turned into Python. SQLite: one chunk, all."""
    if connection.vendor != "postgresql":
        candidates, reasons = waiting_runs(now, aging_minutes)
        yield [c._replace(owner_name=names.get(c.owner_id, c.owner_name)) for c in candidates], reasons
        return
    params: dict[str, Any] = {"now": now, "aging": aging_minutes, "cap": AGING_CAP, "limit": size}
    params.update(after=0, effective=0, created=now)
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_POSTGRES_CHUNK, params)
            rows = cursor.fetchall()
        if not rows:
            return
        yield _candidates(rows, names), {row[0]: row[8] for row in rows}
        if len(rows) < size:
            return
        params.update(after=rows[-1][0], effective=rows[-1][9], created=rows[-1][10])


def waiting_runs(now: datetime, aging_minutes: float) -> tuple[list[Candidate], dict[int, str]]:
    """Queued runs waiting for admission and due now, in admission order; and their current
    waiting reasons."""
    sql, at = _queue_sql(now)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"now": at, "aging": aging_minutes, "cap": AGING_CAP})
        rows = cursor.fetchall()
    # Owners' names for the quota reasons: one small query, not a join on every queued row.
    names = dict(User.objects.filter(pk__in={row[1] for row in rows}).values_list("pk", "username"))
    return _candidates(rows, names), {row[0]: row[8] for row in rows}
