"""The streamed export of a series: its NDJSON is json.dumps' to the byte for every kind of value,
its pages join without a gap, and a bad request names the field."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from rest_framework.test import APIClient

from runs.api.dashboard import ndjson_line
from runs.ingest import write_metric_points
from runs.models import MetricSeries, Run
from tests.api.test_metric_paging import body_of

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.5, 1e-300, 2.5e300, 1 / 3, 123456789.0, None, math.inf, -math.inf, math.nan]
)
def test_an_ndjson_line_is_what_json_dumps_writes(value: float | None) -> None:
    assert ndjson_line(777, value) == json.dumps({"step": 777, "value": value}) + "\n"


@pytest.mark.django_db
def test_an_export_longer_than_a_page_holds_every_point_once(
    owner: User, api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runs.api.dashboard.METRIC_EXPORT_PAGE", 7)
    run = Run.objects.create(name="r", owner=owner, program="scripted", params={})
    series = MetricSeries.objects.create(run=run, key="loss")
    values = [float(step) / 3 if step % 5 else None for step in range(0, 60, 2)]
    with transaction.atomic():
        write_metric_points(
            [(series.pk, step, value, NOW) for step, value in zip(range(0, 60, 2), values, strict=True)],
            may_repeat=True,
        )
    ndjson = body_of(api.get(f"/api/v1/runs/{run.pk}/metrics/export/?key=loss"))
    assert [json.loads(line) for line in ndjson.splitlines()] == [
        {"step": step, "value": value} for step, value in zip(range(0, 60, 2), values, strict=True)
    ]
    csv = body_of(api.get(f"/api/v1/runs/{run.pk}/metrics/export/?key=loss&format=csv")).decode()
    assert csv.splitlines()[:3] == ["step,value", "0,", f"2,{2 / 3!r}"]
    assert len(csv.splitlines()) == 31


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "field"), [("format=csv", "key"), ("key=loss&format=xml", "format")])
def test_a_bad_export_request_is_a_400_naming_the_field(
    owner: User, api: APIClient, query: str, field: str
) -> None:
    run = Run.objects.create(name="r", owner=owner, program="scripted", params={})
    response = api.get(f"/api/v1/runs/{run.pk}/metrics/export/?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [field]
