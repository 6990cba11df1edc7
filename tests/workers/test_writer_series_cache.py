"""A failed batch write forgets the metric series ids it cached: a series created inside the
rolled-back transaction does not exist, and writing points to its id would fail every later try
(a database outage between the series' INSERT and the commit ended a run as final_flush_failed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import structlog
from django.conf import settings
from django.contrib.auth.models import User

from runs import attempts
from runs.models import MetricPoint, Run
from workers.writer import AttemptWriter

pytestmark = pytest.mark.django_db(transaction=True)
NOW = datetime(2026, 12, 8, tzinfo=UTC)


def test_a_write_after_a_failed_one_recreates_the_series_it_lost(owner: User) -> None:
    run = Run.objects.create(name="cache", owner=owner, program="scripted", queue="writer-cache")
    claim = attempts.claim_run(run.pk, "worker-a")
    assert claim is not None
    writer = AttemptWriter(
        run.pk, claim.attempt, settings.CONTROLPLANE, structlog.get_logger("tests"), on_fenced_off=print
    )
    # What a rolled-back write leaves in the cache: the id of a series that was never committed.
    writer._series_cache["loss"] = 987_654_321
    writer.batch.points.append(("loss", 1, 0.5, NOW))
    assert writer.flush() is False  # the foreign key to nothing: kept for the next try
    assert writer.flush() is True
    point = MetricPoint.objects.get(series__run=run, series__key="loss")
    assert (point.step, point.value) == (1, 0.5)
