"""The waiting reasons of the queue's unread tail, in one set-based UPDATE (fleet.scheduler).

A pass stops reading the queue once every pool is served (fleet.placement.Planner.served): from
there on, the plan would give each run its reason and nothing else. That reason depends only on
the run's pool, GPU and node counts (fleet.placement.unfit_reason: the pool's live workers) and on its
owner (the quota: GPUs held after this pass's placements, the limit, the name), so the database
computes it here from those few numbers, with the texts of fleet.placement, and writes it only
where it changes: a steady pass on a long queue writes nothing. tests/fleet/test_early_stop.py
holds the two equal on every kind of reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection

from fleet.models import DeviceKind
from fleet.placement import PoolStats
from fleet.snapshot import QUEUE_FILTER, REQUESTED_GPUS, REQUESTED_NODES, REQUESTED_POOL

# p: the live pools (fleet.placement.pool_stats); o: the queue's owners (GPUs held, limit, name).
# Inner join on o: a run launched by a new owner since the pass read its owners is left to the
# pass its launch triggers, rather than given a quota reason of 0 GPUs.
# `demand`/`largest` are those of the run's kind: GPUs when it asks for some, else one CPU slot.
# Only fleet.snapshot's constants are formatted into the SQL (S608 below).
# nosemgrep: raw-sql-string-formatting - only fleet.snapshot's constants; values are parameters
TAIL_REASONS = f"""
WITH q AS MATERIALIZED (
    SELECT r.id, r.owner_id, r.resources, r.waiting_reason
    FROM runs_run r
    WHERE {QUEUE_FILTER} AND r.id NOT IN (SELECT unnest(%(read)s::bigint[]))  -- a hashed anti-join
), p AS (
    SELECT * FROM unnest(%(pools)s::text[], %(gpu_largest)s::integer[], %(slot_largest)s::integer[],
                         %(active)s::boolean[]) AS p(pool, gpu_largest, slot_largest, active)
), o AS (
    SELECT * FROM unnest(%(owners)s::integer[], %(names)s::text[], %(held)s::integer[],
                         %(limits)s::integer[]) AS o(owner_id, name, held, max_gpus)
), w AS (  -- each live worker's size by kind: how many could take one node of a gang
    SELECT * FROM unnest(%(w_pools)s::text[], %(w_kinds)s::text[], %(w_sizes)s::integer[])
        AS w(pool, kind, size)
), g AS (  -- each distinct (owner, resources) once: a few hundred, not one per run
    SELECT r.owner_id, r.resources, {REQUESTED_POOL} AS pool, {REQUESTED_GPUS} AS gpus,
           {REQUESTED_NODES} AS nodes
    FROM (SELECT DISTINCT owner_id, resources FROM q) r
), s AS (  -- and, for a gang, how many workers of its pool are big enough for one of its nodes
    SELECT g.*, CASE WHEN g.nodes = 1 THEN 1 ELSE (
        SELECT count(*) FROM w WHERE w.pool = g.pool AND w.size >= GREATEST(g.gpus, 1)
          AND w.kind = CASE WHEN g.gpus > 0 THEN 'gpu' ELSE 'slot' END) END AS big_enough
    FROM g
), reasons AS MATERIALIZED (  -- the texts built once per group, not per run
    SELECT g.owner_id, g.resources, LEFT(CASE
        WHEN p.pool IS NULL THEN 'no live worker in pool ' || g.pool
        WHEN g.gpus <= 0 AND p.slot_largest = 0
            THEN 'needs a CPU slot; no live ' || g.pool || ' worker offers CPU-only slots'
        WHEN g.gpus > 0 AND g.gpus > p.gpu_largest
            THEN 'needs ' || g.gpus || ' GPUs; the largest ' || g.pool || ' worker has ' || p.gpu_largest
        WHEN g.big_enough < g.nodes
            THEN 'needs ' || g.nodes || ' workers with '
                 || CASE WHEN g.gpus > 0 THEN g.gpus || ' GPUs' ELSE 'a CPU slot' END
                 || ' each; pool ' || g.pool || ' has ' || g.big_enough
        WHEN NOT p.active THEN 'every live worker in pool ' || g.pool || ' is draining'
        WHEN g.gpus <> 0 AND o.held + g.gpus * g.nodes > o.max_gpus
            THEN 'quota: ' || o.name || ' uses ' || o.held || ' of ' || o.max_gpus || ' GPUs'
        ELSE '' END, 200) AS reason
    FROM s g JOIN o ON o.owner_id = g.owner_id LEFT JOIN p ON p.pool = g.pool
), t AS MATERIALIZED (  -- only the runs whose reason changes (none in a steady pass)
    SELECT q.id, reasons.reason FROM q JOIN reasons USING (owner_id, resources)
    WHERE q.waiting_reason <> reasons.reason
)
UPDATE runs_run r SET waiting_reason = t.reason
FROM t WHERE r.id = t.id
"""  # noqa: S608


def store_tail_reasons(
    now: datetime,
    read: list[int],
    pools: dict[str, PoolStats],
    owners: dict[int, tuple[str, int, int]],
) -> int:
    """Write the reasons of the queued runs not in `read`; `owners`: id -> (name, GPUs held,
    limit). Postgres only (a pass on SQLite reads the whole queue). Returns rows changed."""
    with connection.cursor() as cursor:
        cursor.execute(TAIL_REASONS, tail_params(now, read, pools, owners))
        return int(cursor.rowcount)


def tail_params(
    now: datetime,
    read: list[int],
    pools: dict[str, PoolStats],
    owners: dict[int, tuple[str, int, int]],
) -> dict[str, Any]:
    return {
        "now": now,
        "read": read,
        "pools": list(pools),
        "gpu_largest": [stats.largest.get(DeviceKind.GPU, 0) for stats in pools.values()],
        "slot_largest": [stats.largest.get(DeviceKind.SLOT, 0) for stats in pools.values()],
        "active": [stats.active for stats in pools.values()],
        "w_pools": [pool for pool, stats in pools.items() for sizes in stats.sizes.values() for _ in sizes],
        "w_kinds": [kind for stats in pools.values() for kind, sizes in stats.sizes.items() for _ in sizes],
        "w_sizes": [size for stats in pools.values() for sizes in stats.sizes.values() for size in sizes],
        "owners": list(owners),
        "names": [name for name, _, _ in owners.values()],
        "held": [held for _, held, _ in owners.values()],
        "limits": [limit for _, _, limit in owners.values()],
    }
