"""Counting finished runs for `controlplane_runs_finished_total`.

Runs finish in several processes (a worker's supervisor, the reconciler, the web when a queued
run is cancelled), so the count lives in Postgres, next to the run, and the web's `/metrics`
reads it in one query. Call `count_finished` inside the transaction that makes the run terminal.
"""

from __future__ import annotations

from django.db import connection

from ops.models import RunOutcomeCount

OUTCOMES = frozenset({"succeeded", "failed", "cancelled", "dead"})


def count_finished(program: str, outcome: str, failure_kind: str = "") -> None:
    """One more run of `program` ended as `outcome`; other statuses (queued again) count nothing."""
    outcome, failure_kind = str(outcome), str(failure_kind or "")  # enum members as their values
    if outcome not in OUTCOMES:
        return
    kind = "" if outcome == "succeeded" else failure_kind[:16]
    table = RunOutcomeCount._meta.db_table
    with connection.cursor() as cursor:
        # One statement, no read-modify-write: concurrent finishes of the same key both count.
        cursor.execute(
            f"INSERT INTO {table} (program, outcome, failure_kind, count) VALUES (%s, %s, %s, 1) "  # noqa: S608
            "ON CONFLICT (program, outcome, failure_kind) DO UPDATE SET count = "
            f"{table}.count + 1",
            [program[:64], outcome, kind],
        )


def finished_counts() -> list[tuple[str, str, str, int]]:
    return list(RunOutcomeCount.objects.values_list("program", "outcome", "failure_kind", "count"))
