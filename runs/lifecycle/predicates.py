"""What pages and the API may offer for a run, read from the transition table.

A button shows exactly when the transition behind it would match the run now; the service still
decides under its conditional UPDATE, so a stale page only earns a 409.
"""

from __future__ import annotations

from runs.lifecycle.table import LIVE_STATUSES, TERMINAL_STATUSES, Trigger, allows
from runs.models import Run, RunKind


def may_cancel(run: Run) -> bool:
    """Queued (ends at once) or running (asks the supervisor); a cancelling run is already stopping."""
    return allows(Trigger.CANCEL_QUEUED, run.status) or allows(Trigger.CANCEL_REQUEST, run.status)


def may_retry(run: Run) -> bool:
    """An external run is never queued (no worker could run it): it is not retried."""
    return allows(Trigger.RETRY, run.status) and run.kind != RunKind.EXTERNAL


def may_requeue(run: Run) -> bool:
    """A dead letter, discarded or not, may be given a fresh budget of attempts."""
    return allows(Trigger.DEAD_LETTER_REQUEUE, run.status)


def may_discard(run: Run) -> bool:
    """An open dead letter: dead and not yet discarded."""
    return allows(Trigger.DEAD_LETTER_DISCARD, run.status) and run.discarded_at is None


def is_live(run: Run) -> bool:
    return run.status in LIVE_STATUSES


def is_terminal(run: Run) -> bool:
    return run.status in TERMINAL_STATUSES
