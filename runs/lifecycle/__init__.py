"""The run lifecycle: statuses, the table of allowed transitions, and the one function that
performs them. Every status write of a run goes through here (see docs/architecture.md,
"Run lifecycle").
"""

from runs.lifecycle.listeners import TransitionEvent, admission_is_external, on_transition
from runs.lifecycle.perform import (
    broadcast_status_on_commit,
    close_attempt,
    create_run,
    held_by,
    live_runs,
    open_attempt,
    perform,
    queued_runs,
    status_frame,
)
from runs.lifecycle.predicates import is_live, is_terminal, may_cancel, may_discard, may_requeue, may_retry
from runs.lifecycle.table import (
    ATTEMPT_OUTCOMES,
    EXIT_TRIGGERS,
    LEASE_EXPIRY_TRIGGERS,
    LIVE_STATUSES,
    REOPENING_TRIGGERS,
    RULES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    WAITING_STATUSES,
    Transition,
    Trigger,
    allowed_pairs,
    allows,
    trigger_for,
)

__all__ = [
    "ATTEMPT_OUTCOMES",
    "EXIT_TRIGGERS",
    "LEASE_EXPIRY_TRIGGERS",
    "LIVE_STATUSES",
    "REOPENING_TRIGGERS",
    "RULES",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "WAITING_STATUSES",
    "Transition",
    "TransitionEvent",
    "Trigger",
    "admission_is_external",
    "allowed_pairs",
    "allows",
    "broadcast_status_on_commit",
    "close_attempt",
    "create_run",
    "held_by",
    "is_live",
    "is_terminal",
    "live_runs",
    "may_cancel",
    "may_discard",
    "may_requeue",
    "may_retry",
    "on_transition",
    "open_attempt",
    "perform",
    "queued_runs",
    "status_frame",
    "trigger_for",
]
