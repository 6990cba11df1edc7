"""What happens after an attempt fails: retry (transient kinds, with backoff) or stop.

Permanent kinds fail at once, so a poison config never loops; transient kinds come back after an
exponential backoff with jitter, and a run that has spent `max_attempts` is dead-lettered.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from runs.models import ErrorKind, RunStatus

TRANSIENT_KINDS = frozenset({ErrorKind.INFRASTRUCTURE, ErrorKind.DEVICE})


@dataclass(frozen=True)
class NextStep:
    status: RunStatus
    not_before: datetime | None = None


def backoff(attempt: int, *, rng: random.Random | None = None) -> timedelta:
    """Full-jitter exponential backoff: uniform in [base*2^(n-1)/2, base*2^(n-1)], capped."""
    base = float(settings.CONTROLPLANE["RETRY_BASE_SECONDS"])
    cap = float(settings.CONTROLPLANE["RETRY_MAX_SECONDS"])
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    chooser = rng or random.SystemRandom()
    return timedelta(seconds=chooser.uniform(ceiling / 2, ceiling))


def after_failure(kind: str, attempt: int, max_attempts: int, now: datetime) -> NextStep:
    if kind not in TRANSIENT_KINDS:
        return NextStep(RunStatus.FAILED)
    if attempt >= max_attempts:
        return NextStep(RunStatus.DEAD)
    return NextStep(RunStatus.QUEUED, now + backoff(attempt))
