"""Raw metric points a page at a time while the run keeps writing: none lost, none repeated;
a capped answer says so (`truncated`, `next`); the streamed export holds every point."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import transaction
from rest_framework.test import APIClient

from runs.ingest import write_metric_points
from runs.models import MetricSeries, Run

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def body_of(response: Any) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)()


def write(series_id: int, steps: range) -> None:
    with transaction.atomic():
        write_metric_points([(series_id, step, float(step), NOW) for step in steps], may_repeat=True)


def test_pages_follow_on_while_the_run_writes_and_the_export_holds_every_point(
    owner: User, api: APIClient
) -> None:
    run = Run.objects.create(name="r", owner=owner, program="scripted", params={})
    series = MetricSeries.objects.create(run=run, key="loss")
    write(series.pk, range(0, 2_500))
    api.force_authenticate(owner)
    url: str | None = f"/api/v1/runs/{run.pk}/metrics/?key=loss&limit=1000"
    seen: list[int] = []
    written = 2_500
    while url:
        body = api.get(url).json()
        seen += [point["step"] for point in body["points"]]
        assert body["truncated"] == (body["next"] is not None)
        url = body["next"]
        if written < 6_000:  # the run goes on writing (and rewrites a step already read)
            write(series.pk, range(written - 1, written + 1_000))
            written += 1_000
    assert seen == list(range(written))
    export = api.get(f"/api/v1/runs/{run.pk}/metrics/export/?key=loss&format=ndjson")
    assert export.status_code == 200
    rows = [json.loads(line) for line in body_of(export).splitlines()]
    assert [row["step"] for row in rows] == list(range(written))
    csv = api.get(f"/api/v1/runs/{run.pk}/metrics/export/?key=loss&format=csv")
    lines = body_of(csv).decode().splitlines()
    assert lines[0] == "step,value" and lines[1] == "0,0.0" and len(lines) == written + 1
