"""A COPY that fails raises Django's database errors, not psycopg's own: the supervisor's writer
keeps a batch through a `django.db.DatabaseError` (a Postgres that goes away mid-COPY), and a
psycopg error escaping it once ended the supervisor's task instead (chaos suite, CI)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, DataError, IntegrityError, transaction

from runs.ingest import insert_log_lines, write_metric_points
from runs.models import Run

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 12, 8, tzinfo=UTC)


def test_a_failing_copy_of_log_lines_is_a_django_database_error(owner: User) -> None:
    run = Run.objects.create(name="copy", owner=owner, program="scripted", queue="q")
    insert_log_lines(run.pk, [(1, NOW, "stdout", "first")])
    with pytest.raises(IntegrityError) as raised, transaction.atomic():
        insert_log_lines(run.pk, [(1, NOW, "stdout", "the same seq again")])
    assert isinstance(raised.value, DatabaseError)
    assert isinstance(raised.value.__cause__, psycopg.errors.UniqueViolation)


def test_a_failing_copy_of_points_is_a_django_database_error(owner: User) -> None:
    # A row the COPY refuses for another reason than a repeated step (which falls back to the
    # merge): the error reaches the caller as Django's, not as psycopg's.
    with pytest.raises(DataError) as raised, transaction.atomic():
        write_metric_points([(None, 1, 0.5, NOW)], may_repeat=False)  # type: ignore[list-item]
    assert isinstance(raised.value.__cause__, psycopg.errors.InvalidTextRepresentation)
