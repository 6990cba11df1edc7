"""A supervisor's part in a multi-node run (fleet/gang.py has the rows, docs/distributed.md the
story): node 0 publishes where its torchrun will host the rendezvous; every other node waits for
that, joins the attempt and keeps its own heartbeat, never the run's lease.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from fleet import gang
from fleet.admission import NodeSeat, Seat
from runs import attempts
from runs.attempts import Claim
from workers.launch import GangPart

JOIN_POLL_SECONDS = 0.5


def advertised_address() -> str:
    """Where the other nodes reach this worker: CONTROLPLANE_WORKER_ADDRESS, else the address its
    host name resolves to (set the variable where that is not routable, e.g. a NAT)."""
    configured = str(settings.GANG["WORKER_ADDRESS"])
    if configured:
        return configured
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def free_port() -> int:
    """A port free now for node 0's torchrun store, from CONTROLPLANE_GANG_PORTS (tried in random
    order). The range lies below the kernel's ephemeral ports, so only another gang's choice on
    this host could take it before torchrun binds it; then that attempt fails, and a relaunch
    picks again. The kernel's choice (port 0) only when the whole range is taken."""
    low, _, high = str(settings.GANG["PORTS"]).partition("-")
    candidates = list(range(int(low), int(high or low) + 1))
    random.shuffle(candidates)
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free port for the rendezvous")


def join_seconds() -> int:
    return int(float(settings.GANG["JOIN_SECONDS"]))


def open_gang(claim: Claim, node: NodeSeat, worker: str) -> GangPart:
    """Node 0, just after its claim: choose the rendezvous endpoint and publish it."""
    part = GangPart(0, node.nodes, advertised_address(), free_port(), join_seconds())
    gang.publish(claim.run_id, claim.attempt, worker, part.endpoint)
    return part


def wait_to_join(
    run_id: int, seat: Seat, node: NodeSeat, shutdown: threading.Event
) -> tuple[Claim, GangPart] | None:
    """A node other than 0: wait until node 0 claimed the run and published its endpoint, then
    take this node of that attempt. None when the message is stale (the run's devices here are no
    longer this node's), another supervisor has the node, or node 0 never came."""
    deadline = time.monotonic() + join_seconds()
    while time.monotonic() < deadline and not shutdown.is_set():
        if seat.node(run_id) != node:
            return None
        found = gang.rendezvous(run_id)
        if found is not None:
            attempt, endpoint = found
            if not gang.join(run_id, attempt, node.rank, seat.worker_name):
                return None
            claim = attempts.joined_claim(run_id, attempt)
            host, _, port = endpoint.rpartition(":")
            part = GangPart(node.rank, node.nodes, host, int(port), join_seconds())
            return (claim, part) if claim is not None else None
        close_old_connections()
        time.sleep(JOIN_POLL_SECONDS)
    return None


@dataclass
class GangBeat:
    """What the watch loop calls at each heartbeat of a gang's node; returns the run's status.

    Node 0 renews the run's one lease, then checks the other nodes (fleet.gang.trouble raises
    GangBroken through `check`). Another node heartbeats its own row and reads the status, so a
    lost node 0 lets the lease expire instead of being kept alive by the others."""

    claim: Claim
    part: GangPart
    started: datetime

    def __call__(self) -> str:
        run_id, attempt = self.claim.run_id, self.claim.attempt
        if self.part.rank > 0:
            gang.beat(run_id, attempt, self.part.rank)
            return attempts.current_status(run_id, attempt)
        status = attempts.renew_lease(run_id, attempt)
        if (problem := gang.trouble(run_id, attempt, self.part.nodes, self.started)) is not None:
            raise gang.GangBroken(problem)
        return status


def keep_alive(claim: Claim, part: GangPart | None) -> Callable[[], object]:
    """What keeps the attempt alive while the loop is busy storing a file (workers/lease_keeper.py)."""
    if part is not None and part.rank > 0:
        rank = part.rank
        return lambda: gang.beat(claim.run_id, claim.attempt, rank)
    return lambda: attempts.renew_lease(claim.run_id, claim.attempt)


def lease_beat(claim: Claim, part: GangPart | None) -> Callable[[], str]:
    """The heartbeat of an attempt: the run's lease, plus the gang's own rules for a gang."""
    if part is None:
        return lambda: attempts.renew_lease(claim.run_id, claim.attempt)
    return GangBeat(claim, part, timezone.now())


def others_failed(claim: Claim, part: GangPart) -> str | None:
    """Node 0, its program ended: wait (bounded) for the other nodes to report theirs; what went
    wrong with them, or None when every one ended with 0."""
    deadline = time.monotonic() + float(settings.GANG["EXIT_WAIT_SECONDS"])
    while True:
        codes = gang.exits(claim.run_id, claim.attempt)
        failed = {rank: code for rank, code in codes.items() if code not in (None, 0)}
        if failed:
            rank, code = min(failed.items())
            return f"node {rank} exited with code {code}"
        pending = [rank for rank in range(1, part.nodes) if codes.get(rank) is None]
        if not pending:
            return None
        if time.monotonic() >= deadline:
            return f"node {pending[0]} did not report its end within {settings.GANG['EXIT_WAIT_SECONDS']} s"
        time.sleep(JOIN_POLL_SECONDS)
