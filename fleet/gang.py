"""Multi-node runs (gangs): the rows through which the nodes of one attempt find and watch each
other (docs/distributed.md).

The scheduler reserves every node's devices in one pass or none (fleet.placement) and sends the
run to each node's worker. Node 0's worker claims the run (the one lease of the gang), chooses the
rendezvous endpoint and publishes it here; each other node joins the attempt node 0 opened, reads
the endpoint, starts its part and heartbeats its row. Node 0 checks the others at every lease
renewal (`trouble`): a node that does not join in time, stops beating or exits with an error
ends the attempt, which fails or is queued again as a whole (runs.reliability). A lost node 0
lets the lease expire; the reconciler then ends the attempt, and the other nodes, whose writes
and status reads are fenced by the attempt, stop their programs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet.models import GangNode
from runs.lifecycle import LIVE_STATUSES
from runs.models import Run, RunStatus


class GangBroken(Exception):
    """Another node of the attempt is gone or failed: the attempt ends (node 0)."""


def publish(run_id: int, attempt: int, worker: str, endpoint: str) -> None:
    """Node 0, once it claimed the attempt: where the others find its rendezvous."""
    GangNode.objects.create(
        run_id=run_id, attempt=attempt, node_rank=0, worker=worker[:255], endpoint=endpoint
    )


def rendezvous(run_id: int) -> tuple[int, str] | None:
    """(attempt, endpoint) of the run's running attempt once node 0 published it; else None."""
    attempt = (
        Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).values_list("attempt", flat=True).first()
    )
    if attempt is None:
        return None
    endpoint = (
        GangNode.objects.filter(run_id=run_id, attempt=attempt, node_rank=0)
        .values_list("endpoint", flat=True)
        .first()
    )
    return (int(attempt), str(endpoint)) if endpoint else None


def join(run_id: int, attempt: int, rank: int, worker: str) -> bool:
    """Take node `rank` of the attempt; False when another supervisor has it (a second delivery)
    or the attempt is over."""
    try:
        with transaction.atomic():
            if not Run.objects.filter(pk=run_id, attempt=attempt, status__in=LIVE_STATUSES).exists():
                return False
            GangNode.objects.create(run_id=run_id, attempt=attempt, node_rank=rank, worker=worker[:255])
    except IntegrityError:
        return False
    return True


def beat(run_id: int, attempt: int, rank: int) -> None:
    GangNode.objects.filter(run_id=run_id, attempt=attempt, node_rank=rank).update(
        heartbeat_at=timezone.now()
    )


def report_exit(run_id: int, attempt: int, rank: int, exit_code: int) -> None:
    GangNode.objects.filter(run_id=run_id, attempt=attempt, node_rank=rank).update(
        exit_code=exit_code, heartbeat_at=timezone.now()
    )


def trouble(
    run_id: int, attempt: int, nodes: int, started: datetime, now: datetime | None = None
) -> str | None:
    """What is wrong with the other nodes of the attempt, in words; None while all is well."""
    now = now or timezone.now()
    lease = timedelta(seconds=float(settings.CONTROLPLANE["LEASE_SECONDS"]))
    join_within = timedelta(seconds=float(settings.GANG["JOIN_SECONDS"]))
    rows = {
        rank: (worker, beaten, code)
        for rank, worker, beaten, code in GangNode.objects.filter(run_id=run_id, attempt=attempt)
        .exclude(node_rank=0)
        .values_list("node_rank", "worker", "heartbeat_at", "exit_code")
    }
    for rank in range(1, nodes):
        if rank not in rows:
            if now - started > join_within:
                return f"node {rank} did not join within {join_within.total_seconds():g} s"
            continue
        worker, beaten, code = rows[rank]
        if code is not None and code != 0:
            return f"node {rank} ({worker}) exited with code {code}"
        if code is None and now - beaten > lease:
            return (
                f"node {rank} ({worker}) was lost: no heartbeat for {int((now - beaten).total_seconds())} s"
            )
    return None


def exits(run_id: int, attempt: int) -> dict[int, int | None]:
    """The other nodes' exit codes (None: still running), by rank; ranks that never joined are
    missing."""
    rows = GangNode.objects.filter(run_id=run_id, attempt=attempt).exclude(node_rank=0)
    return dict(rows.values_list("node_rank", "exit_code"))
