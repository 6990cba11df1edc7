from __future__ import annotations

from django.db import models
from django.utils import timezone


class BreakerState(models.TextChoices):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker(models.Model):
    """Shared state of one circuit breaker, so every worker process sees the same one."""

    name = models.CharField(max_length=200, primary_key=True)
    state = models.CharField(max_length=10, choices=BreakerState.choices, default=BreakerState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name}: {self.state}"


class RunOutcomeCount(models.Model):
    """How many runs reached each terminal outcome: `controlplane_runs_finished_total`.

    Incremented in the transaction that finishes the run (a rolled-back finish counts nothing),
    and never decremented, so Prometheus sees a true counter across every process and restart.
    """

    program = models.CharField(max_length=64)
    outcome = models.CharField(max_length=16)
    failure_kind = models.CharField(max_length=16, blank=True)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["program", "outcome", "failure_kind"], name="run_outcome_key")
        ]

    def __str__(self) -> str:
        return f"{self.program} {self.outcome} {self.failure_kind}: {self.count}"
