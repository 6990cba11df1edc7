"""The run statuses, how they group, and the table of allowed transitions.

This module is data: every status change of a run is one row of `TRANSITIONS`, and
`runs.lifecycle.perform` refuses a change that has no row. A new state (say `waiting` or
`preempted`) is a new `RunStatus` member, its place in the groups below, and the rows that enter
and leave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from runs.models import RunStatus

# An attempt holds the run: a supervisor is (or was, until its lease runs out) working on it.
# `preempted`: the scheduler asked the program to stop; the attempt still holds the run (and its
# devices, and renews its lease) until the program has written its final checkpoint and exited.
LIVE_STATUSES = frozenset({RunStatus.RUNNING, RunStatus.CANCELLING, RunStatus.PREEMPTED})
# Waiting for a worker. `lost` is an attempt's outcome; a run row holds it only when an older
# version wrote it, and such a run waits (and may be cancelled) like a queued one.
WAITING_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.LOST})
# Terminal: nothing moves the run again on its own. Only an explicit user action leaves these
# statuses (`retry`, `dead_letter.requeue`); see `REOPENING_TRIGGERS`.
TERMINAL_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD})
# How an attempt row ends (`RunAttempt.status`); `lost`: its lease ran out.
ATTEMPT_OUTCOMES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.LOST, RunStatus.PREEMPTED}
)

Cause = Literal["user", "admin", "supervisor", "reconciler", "scheduler"]


class Trigger(StrEnum):
    """Why a run changes status; one row of the table per trigger."""

    LAUNCH = "launch"
    CLAIM = "claim"
    CANCEL_QUEUED = "cancel.queued"
    CANCEL_REQUEST = "cancel.request"
    CANCEL_REPEATED = "cancel.repeated"
    EXIT_SUCCEEDED = "exit.succeeded"
    EXIT_FAILED = "exit.failed"
    EXIT_CANCELLED = "exit.cancelled"
    EXIT_TRANSIENT_REQUEUE = "exit.transient.requeue"
    EXIT_TRANSIENT_DEAD = "exit.transient.dead"
    LEASE_EXPIRED_REQUEUE = "lease_expired.requeue"
    LEASE_EXPIRED_DEAD = "lease_expired.dead"
    LEASE_EXPIRED_CANCELLED = "lease_expired.cancelled"
    QUEUE_TTL_EXPIRED = "queue_ttl.expired"
    PREEMPT_REQUEST = "preempt.request"
    EXIT_PREEMPTED = "exit.preempted"
    RETRY = "retry"
    DEAD_LETTER_REQUEUE = "dead_letter.requeue"
    DEAD_LETTER_DISCARD = "dead_letter.discard"
    START_EXTERNAL = "start.external"
    CANCEL_EXTERNAL = "cancel.external"


@dataclass(frozen=True)
class Transition:
    trigger: Trigger
    # The statuses the conditional UPDATE accepts; empty for `launch`, which inserts the row.
    sources: frozenset[RunStatus]
    target: RunStatus
    cause: Cause
    # Fenced: the UPDATE also names the attempt, so a stale supervisor (or a reconciler that read
    # an older attempt) matches no row once another attempt owns the run.
    fenced: bool = False
    audit_action: str = ""  # recorded in the same transaction when set
    why: str = ""

    @property
    def changes_status(self) -> bool:
        """False for rows that keep the status (a discard, a repeated cancel): nothing to broadcast."""
        return self.sources != frozenset({self.target})

    @property
    def finishes(self) -> bool:
        """The run becomes terminal here: `controlplane_runs_finished_total` counts it once."""
        return self.target in TERMINAL_STATUSES and self.target not in self.sources


_QUEUED = frozenset({RunStatus.QUEUED})
_RUNNING = frozenset({RunStatus.RUNNING})
_PREEMPTED = frozenset({RunStatus.PREEMPTED})
_RUNNING_OR_PREEMPTED = frozenset({RunStatus.RUNNING, RunStatus.PREEMPTED})
_CANCELLING = frozenset({RunStatus.CANCELLING})
_DEAD = frozenset({RunStatus.DEAD})
_RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD})
QUEUED, RUNNING, CANCELLING = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.CANCELLING
SUCCEEDED, FAILED = RunStatus.SUCCEEDED, RunStatus.FAILED
CANCELLED, DEAD, PREEMPTED = RunStatus.CANCELLED, RunStatus.DEAD, RunStatus.PREEMPTED

# fmt: off
TRANSITIONS: tuple[Transition, ...] = (
    # trigger                         sources           target      cause
    Transition(Trigger.LAUNCH,         frozenset(),      QUEUED,     "user", audit_action="run.launch",
               why="the row is inserted queued; the task is sent on commit"),
    Transition(Trigger.CLAIM,          _QUEUED,          RUNNING,    "supervisor",
               why="a worker takes a due run; the attempt number (fencing token) goes up by one"),
    Transition(Trigger.CANCEL_QUEUED,  WAITING_STATUSES, CANCELLED,  "user", audit_action="run.cancel",
               why="cancel of a run that has not started ends it at once"),
    Transition(Trigger.CANCEL_REQUEST, _RUNNING_OR_PREEMPTED, CANCELLING, "user", audit_action="run.cancel",
               why="cancel of a running (or preempted) run asks its supervisor to stop the program"),
    Transition(Trigger.CANCEL_REPEATED, _CANCELLING,     CANCELLING, "user", audit_action="run.cancel",
               why="a second cancel changes nothing but is recorded"),
    Transition(Trigger.EXIT_SUCCEEDED, LIVE_STATUSES,    SUCCEEDED,  "supervisor", fenced=True,
               why="the program exited 0"),
    Transition(Trigger.EXIT_FAILED,    LIVE_STATUSES,    FAILED,     "supervisor", fenced=True,
               why="a permanent failure (config, data, oom, program, timeout) fails at once"),
    Transition(Trigger.EXIT_CANCELLED, LIVE_STATUSES,    CANCELLED,  "supervisor", fenced=True,
               why="the supervisor stopped the program after a cancel"),
    Transition(Trigger.EXIT_TRANSIENT_REQUEUE, LIVE_STATUSES, QUEUED, "supervisor", fenced=True,
               why="a transient failure (infrastructure, device) queues the run after a backoff"),
    Transition(Trigger.EXIT_TRANSIENT_DEAD, LIVE_STATUSES, DEAD,     "supervisor", fenced=True,
               why="a transient failure with max_attempts spent: a dead letter"),
    Transition(Trigger.LEASE_EXPIRED_REQUEUE, _RUNNING_OR_PREEMPTED, QUEUED,     "reconciler", fenced=True,
               why="the worker stopped renewing its lease: the attempt is lost, the run queued again"),
    Transition(Trigger.LEASE_EXPIRED_DEAD, _RUNNING_OR_PREEMPTED, DEAD,       "reconciler", fenced=True,
               why="a lost attempt with max_attempts spent: a dead letter"),
    Transition(Trigger.LEASE_EXPIRED_CANCELLED, _CANCELLING, CANCELLED, "reconciler", fenced=True,
               why="the worker of a cancelling run is gone: the cancel is complete"),
    Transition(Trigger.PREEMPT_REQUEST, _RUNNING,        PREEMPTED,  "scheduler", fenced=True,
               why="a higher-priority run needs the devices: the supervisor stops the program (SIGTERM, "
                   "a final checkpoint)"),
    Transition(Trigger.EXIT_PREEMPTED, _PREEMPTED,       QUEUED,     "supervisor", fenced=True,
               why="the preempted program exited: queued again at its old place (created_at kept), "
                   "to resume from its checkpoint"),
    Transition(Trigger.QUEUE_TTL_EXPIRED, _QUEUED,       FAILED,     "reconciler",
               why="queued longer than its queue_ttl_seconds: fails as timeout"),
    Transition(Trigger.RETRY,          _RETRYABLE,       QUEUED,     "user", audit_action="run.retry",
               why="queued again; the next attempt continues the same log"),
    Transition(Trigger.DEAD_LETTER_REQUEUE, _DEAD,       QUEUED,     "admin",
               audit_action="dead_letter.requeue",
               why="a fresh budget of max_attempts; resumes from the newest checkpoint"),
    Transition(Trigger.DEAD_LETTER_DISCARD, _DEAD,       DEAD,       "admin",
               audit_action="dead_letter.discard",
               why="the dead letter is closed (discarded_at); the run stays dead"),
    # Tracking mode (runs/tracking.py): a script outside the control plane reports over HTTP; no
    # queue, no worker. It ends the run with a status event (the exit.* rows, attempt 1), or the
    # reconciler fails it when it stays silent (exit.failed, `report_timeout`).
    Transition(Trigger.START_EXTERNAL, frozenset(),      RUNNING,    "user", audit_action="run.launch",
               why="an external run is inserted running, with its first attempt open"),
    Transition(Trigger.CANCEL_EXTERNAL, _RUNNING,        CANCELLED,  "user", audit_action="run.cancel",
               why="no supervisor stops an external run: a cancel ends it at once (its token is revoked)"),
)
# fmt: on

RULES: dict[Trigger, Transition] = {row.trigger: row for row in TRANSITIONS}
assert len(RULES) == len(TRANSITIONS), "one row per trigger"

# The only rows that take a run out of a terminal status: explicit user actions.
REOPENING_TRIGGERS = frozenset(
    row.trigger for row in TRANSITIONS if row.sources & TERMINAL_STATUSES and row.changes_status
)
# How an attempt's end maps to a row, by the status the run ends in.
EXIT_TRIGGERS = (
    Trigger.EXIT_SUCCEEDED,
    Trigger.EXIT_FAILED,
    Trigger.EXIT_CANCELLED,
    Trigger.EXIT_TRANSIENT_REQUEUE,
    Trigger.EXIT_TRANSIENT_DEAD,
)
LEASE_EXPIRY_TRIGGERS = (
    Trigger.LEASE_EXPIRED_REQUEUE,
    Trigger.LEASE_EXPIRED_DEAD,
    Trigger.LEASE_EXPIRED_CANCELLED,
)


def trigger_for(candidates: tuple[Trigger, ...], target: RunStatus) -> Trigger:
    """The one row among `candidates` that ends in `target` (an exit's outcome, say)."""
    matches = [trigger for trigger in candidates if RULES[trigger].target == target]
    if len(matches) != 1:
        raise ValueError(f"no single transition to {target} among {[str(t) for t in candidates]}")
    return matches[0]


def allows(trigger: Trigger, status: str) -> bool:
    """The row for `trigger` accepts a run in `status`."""
    return status in RULES[trigger].sources


def allowed_pairs() -> frozenset[tuple[RunStatus, RunStatus]]:
    """Every (from, to) the table permits; a status that stays the same is always allowed."""
    return frozenset((source, row.target) for row in TRANSITIONS for source in row.sources)
