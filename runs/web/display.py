"""How run facts read on a page: durations, sizes, progress, the status timeline.

Pure functions of a run and the time, so pages and tests share them and nothing here queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from runs.lifecycle import LIVE_STATUSES, TERMINAL_STATUSES, WAITING_STATUSES
from runs.models import Run, RunStatus

STATUS_LABELS = {
    RunStatus.QUEUED: "Queued",
    RunStatus.RUNNING: "Running",
    RunStatus.CANCELLING: "Cancelling",
    RunStatus.PREEMPTED: "Preempted",
    RunStatus.SUCCEEDED: "Succeeded",
    RunStatus.FAILED: "Failed",
    RunStatus.CANCELLED: "Cancelled",
    RunStatus.LOST: "Lost",
    RunStatus.DEAD: "Dead",
}


def duration_seconds(run: Run, now: datetime) -> float | None:
    """Time the current attempt has run (so far, while it runs); None before it starts."""
    if run.started_at is None:
        return None
    if run.finished_at is not None:
        end = run.finished_at
    elif run.status in LIVE_STATUSES:
        end = now
    else:
        return None  # queued again after a retry: the old attempt's time is not this one's
    return max(0.0, (end - run.started_at).total_seconds())


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def progress_percent(run: Run) -> int | None:
    if run.progress_step is None or not run.progress_total:
        return None
    return max(0, min(100, int(100 * run.progress_step / run.progress_total)))


@dataclass(frozen=True)
class TimelineStep:
    label: str
    at: datetime | None
    state: str  # "done", "current", "pending", "skipped" (never happened); outcomes: "failed", "stopped"


def timeline(run: Run) -> list[TimelineStep]:
    """queued → dispatched → running → (cancelling →) the outcome, each with its time."""
    status = run.status
    waiting = status in WAITING_STATUSES
    # A retried run is queued again: the earlier attempt's start does not belong to this wait.
    started = None if waiting else run.started_at
    steps = [("Queued", run.created_at), ("Dispatched", run.enqueued_at), ("Running", started)]
    cancelled_while_running = status == RunStatus.CANCELLED and run.cancel_requested_at and started
    if status == RunStatus.CANCELLING or cancelled_while_running:
        steps.append(("Cancelling", run.cancel_requested_at))
    terminal = status in TERMINAL_STATUSES
    steps.append(
        (STATUS_LABELS[RunStatus(status)] if terminal else "Finished", run.finished_at if terminal else None)
    )
    # Where the run is now: every step before it is done, every step after it pending.
    if waiting:
        now = 1 if run.enqueued_at is not None else 0
    elif status == RunStatus.RUNNING:
        now = 2
    elif status == RunStatus.CANCELLING:
        now = 3
    else:
        now = len(steps) - 1
    outcome = len(steps) - 1
    result = []
    for index, (label, at) in enumerate(steps):
        if index < now:
            # A step happened if it has a time or a later step (short of the outcome) has one; a
            # run cancelled while queued never ran, and the timeline says so.
            happened = index == 0 or any(later is not None for _, later in steps[index:outcome])
            state = "done" if happened else "skipped"
        elif index > now:
            state = "pending"
        elif terminal:
            state = {RunStatus.SUCCEEDED: "done", RunStatus.CANCELLED: "stopped"}.get(
                RunStatus(status), "failed"
            )
        else:
            state = "current"
        result.append(TimelineStep(label, at, state))
    return result
