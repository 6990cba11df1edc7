"""Circuit breakers around external dependencies (dataset sources today).

A breaker opens after `threshold` consecutive failures and refuses calls for `cooldown` seconds,
so a dead dependency costs one fast refusal per run instead of minutes of timeouts each; then it
lets one trial call through (half-open) and closes again on success. Its state lives in the
database so every worker process shares it, and /metrics and /readyz can show it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ops.models import BreakerState, CircuitBreaker

log = structlog.get_logger(__name__)
T = TypeVar("T")


class BreakerOpen(Exception):
    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open; next try in {retry_in:.0f} s")
        self.name = name
        self.retry_in = retry_in


class Breaker:
    def __init__(self, name: str, *, threshold: int | None = None, cooldown: float | None = None) -> None:
        self.name = name[:200]
        self.threshold = threshold or int(settings.CONTROLPLANE["BREAKER_THRESHOLD"])
        self.cooldown = (
            cooldown if cooldown is not None else float(settings.CONTROLPLANE["BREAKER_COOLDOWN_SECONDS"])
        )

    def _healthy(self) -> bool:
        """Closed with no failure counted: the common case, read without a lock or a write (every
        storage call passes here, and a row lock taken by each would serialize them all)."""
        row = (
            CircuitBreaker.objects.filter(name=self.name).values_list("state", "consecutive_failures").first()
        )
        return row is not None and row == (BreakerState.CLOSED, 0)

    def _before(self) -> None:
        if self._healthy():
            return
        now = timezone.now()
        with transaction.atomic():
            row, _ = CircuitBreaker.objects.select_for_update().get_or_create(name=self.name)
            if row.state == BreakerState.OPEN:
                assert row.opened_until is not None
                if row.opened_until > now:
                    raise BreakerOpen(self.name, (row.opened_until - now).total_seconds())
                # The cooldown is over: this caller is the one trial call.
                row.state = BreakerState.HALF_OPEN
                row.updated_at = now
                row.save(update_fields=["state", "updated_at"])
                log.info("breaker_half_open", breaker=self.name)

    def _record(self, error: Exception | None) -> None:
        if error is None and self._healthy():
            return
        now = timezone.now()
        with transaction.atomic():
            row, _ = CircuitBreaker.objects.select_for_update().get_or_create(name=self.name)
            if error is None:
                if row.state != BreakerState.CLOSED:
                    log.info("breaker_closed", breaker=self.name)
                row.state, row.consecutive_failures, row.opened_until = BreakerState.CLOSED, 0, None
            else:
                row.consecutive_failures += 1
                row.last_error = str(error)[:500]
                if row.state == BreakerState.HALF_OPEN or row.consecutive_failures >= self.threshold:
                    row.state = BreakerState.OPEN
                    row.opened_until = now + timedelta(seconds=self.cooldown)
                    log.warning("breaker_opened", breaker=self.name, failures=row.consecutive_failures)
            row.updated_at = now
            row.save()

    def call(self, function: Callable[[], T], *, counts_as_failure: Callable[[Exception], bool]) -> T:
        """Run `function` through the breaker; only errors of the dependency trip it."""
        self._before()
        try:
            result = function()
        except Exception as error:
            if counts_as_failure(error):
                self._record(error)
            else:
                self._record(None)
            raise
        self._record(None)
        return result


def breaker_states() -> list[tuple[str, str, int]]:
    return list(CircuitBreaker.objects.order_by("name").values_list("name", "state", "consecutive_failures"))
