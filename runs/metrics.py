"""What the runs app gives the scrape-time collector (ops.collectors): counts and ages only."""

from __future__ import annotations

from django.db.models import Count, DateTimeField, Min, Q
from django.db.models.functions import Coalesce, Greatest

from ops.collectors import RunCounts
from runs.models import Run, RunStatus
from runs.programs import all_programs


def read_run_counts() -> RunCounts:
    """Two queries whatever the number of runs: runs by status, oldest due queued run per queue."""
    by_status = {
        row["status"]: row
        for row in Run.objects.values("status").annotate(
            n=Count("pk"), open=Count("pk", filter=Q(discarded_at__isnull=True))
        )
    }
    # A queued run is due from when it was queued (updated_at) or its backoff ends.
    due = Greatest("updated_at", Coalesce("not_before", "updated_at"), output_field=DateTimeField())
    oldest = dict(
        Run.objects.filter(status=RunStatus.QUEUED)
        .values("queue")
        .annotate(since=Min(due))
        .values_list("queue", "since")
    )
    return RunCounts(
        by_status={status: by_status.get(status, {}).get("n", 0) for status in RunStatus.values},
        dead_letters_open=by_status.get(RunStatus.DEAD, {}).get("open", 0),
        oldest_due=oldest,
    )


def program_queues() -> set[str]:
    return {program.queue for program in all_programs().values() if program.queue}
