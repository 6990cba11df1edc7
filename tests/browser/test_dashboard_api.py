"""The read endpoints the dashboard adds (runs/api/dashboard.py), through the API client."""

from __future__ import annotations

import json
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from runs import rollups, selectors
from runs.models import Artifact, LogLine, MetricPoint, MetricSeries, Run, RunStatus

pytestmark = pytest.mark.django_db


def make_run(owner: User, **fields: Any) -> Run:
    fields.setdefault("name", "run")
    fields.setdefault("program", "scripted")
    fields.setdefault("queue", "training")
    return Run.objects.create(owner=owner, **fields)


def add_lines(run: Run, count: int, stream: str = "stdout") -> None:
    now = timezone.now()
    start = run.log_seq
    LogLine.objects.bulk_create(
        LogLine(run=run, seq=start + i, ts=now, stream=stream, line=f"line {start + i}")
        for i in range(1, count + 1)
    )
    Run.objects.filter(pk=run.pk).update(log_seq=start + count)
    run.refresh_from_db()


def add_points(run: Run, key: str, values: dict[int, float | None]) -> None:
    series, _ = MetricSeries.objects.get_or_create(run=run, key=key)
    start = timezone.now()
    MetricPoint.objects.bulk_create(
        MetricPoint(series=series, step=step, value=value, ts=start + timedelta(milliseconds=step))
        for step, value in values.items()
    )
    rollups.update_rollups((series.pk, step) for step in values)  # as the supervisor's writes do


# -- live states of a page of runs ------------------------------------------------------------


def test_states_answers_for_the_runs_asked_and_the_newest_id(api: APIClient, owner: User) -> None:
    running = make_run(
        owner,
        status=RunStatus.RUNNING,
        attempt=1,
        progress_step=3,
        progress_total=10,
        started_at=timezone.now(),
    )
    queued = make_run(owner)
    body = api.get(f"/api/v1/runs/states/?ids={running.pk},{queued.pk},424242").json()
    assert [run["id"] for run in body["runs"]] == [queued.pk, running.pk]
    by_id = {run["id"]: run for run in body["runs"]}
    assert by_id[running.pk]["progress"] == {"step": 3, "total": 10}
    assert by_id[queued.pk]["progress"] is None and by_id[queued.pk]["status"] == "queued"
    assert body["latest_id"] == queued.pk and body["now"]


def test_states_refuses_bad_ids_and_strangers(api: APIClient, anonymous_api: APIClient) -> None:
    assert api.get("/api/v1/runs/states/?ids=1,x").status_code == 400
    assert api.get("/api/v1/runs/states/?ids=" + ",".join(str(i) for i in range(201))).status_code == 400
    assert api.get("/api/v1/runs/states/").json()["runs"] == []
    assert anonymous_api.get("/api/v1/runs/states/?ids=1").status_code == 401


def test_states_costs_a_fixed_number_of_queries(
    api: APIClient, owner: User, django_assert_max_num_queries: Any
) -> None:
    ids = ",".join(str(make_run(owner).pk) for _ in range(30))
    with django_assert_max_num_queries(4):  # token, runs, newest id (+ the token's last-used write)
        api.get(f"/api/v1/runs/states/?ids={ids}")


# -- opening a log at its tail ----------------------------------------------------------------


def test_the_tail_is_the_newest_lines_and_pages_go_back_with_before(api: APIClient, owner: User) -> None:
    run = make_run(owner)
    add_lines(run, 2_500)
    tail = api.get(f"/api/v1/runs/{run.pk}/logs/tail/?limit=1000").json()
    assert [line["seq"] for line in tail["results"]] == list(range(1501, 2501))
    assert tail["has_older"] is True and tail["last_seq"] == 2500
    older = api.get(f"/api/v1/runs/{run.pk}/logs/tail/?before=1501&limit=1000").json()
    assert [line["seq"] for line in older["results"]] == list(range(501, 1501))
    first = api.get(f"/api/v1/runs/{run.pk}/logs/tail/?before=501&limit=1000").json()
    assert [line["seq"] for line in first["results"]] == list(range(1, 501))
    assert first["has_older"] is False


def test_the_tail_of_an_empty_log_and_bad_input(
    api: APIClient, owner: User, anonymous_api: APIClient
) -> None:
    run = make_run(owner)
    assert api.get(f"/api/v1/runs/{run.pk}/logs/tail/").json() == {
        "results": [],
        "has_older": False,
        "last_seq": 0,
        "run_status": "queued",
    }
    assert api.get(f"/api/v1/runs/{run.pk}/logs/tail/?before=0").status_code == 400
    assert api.get(f"/api/v1/runs/{run.pk}/logs/tail/?limit=999999").status_code == 400
    assert api.get("/api/v1/runs/424242/logs/tail/").status_code == 404
    assert anonymous_api.get(f"/api/v1/runs/{run.pk}/logs/tail/").status_code == 401


# -- the whole log as text ------------------------------------------------------------------


# The test client is sync; the view streams an async iterator (as it must under ASGI).
STREAM_WARNING = "ignore:StreamingHttpResponse must consume asynchronous iterators"


@pytest.mark.filterwarnings(STREAM_WARNING)
def test_the_log_downloads_as_text_in_pages(client: Client, owner: User) -> None:
    run = make_run(owner)
    add_lines(run, 12_345)
    LogLine.objects.filter(run=run, seq=7).update(stream="stderr", line="<b>é</b>\x1b[31m")
    client.force_login(owner)
    response = client.get(f"/api/v1/runs/{run.pk}/logs.txt")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}-log.txt"'
    text = b"".join(response).decode()  # an async stream, consumed as the test client can
    lines = text.splitlines()
    assert len(lines) == 12_345
    assert lines[0].endswith(" stdout line 1")
    assert lines[6].endswith(" stderr <b>é</b>\x1b[31m")
    assert lines[-1].endswith("line 12345")


def test_the_log_download_needs_a_reader(client: Client, owner: User) -> None:
    run = make_run(owner)
    assert client.get(f"/api/v1/runs/{run.pk}/logs.txt").status_code == 401
    client.force_login(owner)
    assert client.get("/api/v1/runs/424242/logs.txt").status_code == 404


@pytest.mark.filterwarnings(STREAM_WARNING)
def test_the_log_download_takes_a_bearer_token(owner: User) -> None:
    from accounts.tokens import do_issue_token

    run = make_run(owner)
    add_lines(run, 3)
    token = do_issue_token(owner).plaintext
    response = Client().get(f"/api/v1/runs/{run.pk}/logs.txt", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert b"".join(response).count(b"\n") == 3


# -- chart series ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    cache.clear()


def test_a_short_series_comes_back_raw_with_its_times(api: APIClient, owner: User) -> None:
    run = make_run(owner)
    add_points(run, "train/loss", {0: 2.0, 10: 1.5, 20: None})
    add_points(run, "lr", {0: 0.1})
    body = api.get(f"/api/v1/runs/{run.pk}/charts/?max_points=100").json()
    by_key = {series["key"]: series for series in body["series"]}
    assert list(by_key) == ["lr", "train/loss"]
    loss = by_key["train/loss"]
    assert (loss["bucket_steps"], loss["steps"], loss["values"], loss["low"]) == (
        1,
        [0, 10, 20],
        [2.0, 1.5, None],
        None,
    )
    assert loss["ts"][1] - loss["ts"][0] == pytest.approx(10, abs=1)
    only = api.get(f"/api/v1/runs/{run.pk}/charts/?key=lr").json()["series"]
    assert [series["key"] for series in only] == ["lr"]


def test_a_long_series_is_bucketed_and_keeps_its_spike(api: APIClient, owner: User) -> None:
    run = make_run(owner, status=RunStatus.SUCCEEDED)
    values: dict[int, float | None] = {step: 1.0 + (step % 7) / 100 for step in range(50_000)}
    values[31_337] = 500.0
    values[12_345] = -40.0
    add_points(run, "train/loss", values)
    series = api.get(f"/api/v1/runs/{run.pk}/charts/?max_points=600").json()["series"][0]
    assert series["bucket_steps"] > 1 and series["bucket_steps"] & (series["bucket_steps"] - 1) == 0
    assert 300 <= len(series["steps"]) <= 600  # between max_points/2 and max_points buckets
    assert max(series["high"]) == 500.0 and min(series["low"]) == -40.0
    spike = series["high"].index(500.0)
    assert series["steps"][spike] <= 31_337 < series["steps"][spike] + series["bucket_steps"]
    assert all(
        low <= mean <= high
        for low, mean, high in zip(series["low"], series["values"], series["high"], strict=True)
    )


def test_bucketed_series_are_read_from_the_rollups_and_stay_current_while_live(
    owner: User, django_assert_max_num_queries: Any
) -> None:
    run = make_run(owner, status=RunStatus.RUNNING, attempt=1)
    add_points(run, "loss", {step: float(step) for step in range(20_000)})
    first = selectors.chart_series(run, None, 400)[0]
    with django_assert_max_num_queries(2):  # the extents of the series, its rollup rows
        again = selectors.chart_series(run, None, 400)[0]
    assert again == first
    # New points update their buckets' rollups and show up at once.
    add_points(run, "loss", {step: 99_999.0 for step in range(20_000, 20_050)})
    after = selectors.chart_series(run, None, 400)[0]
    assert max(v for v in after.high or [] if v is not None) == 99_999.0


def test_a_chart_reads_rollup_rows_not_points(owner: User, django_assert_max_num_queries: Any) -> None:
    run = make_run(owner, status=RunStatus.SUCCEEDED, attempt=1)
    add_points(run, "loss", {step: float(step % 13) for step in range(30_000)})
    selectors.chart_series(run, None, 2_000)
    with django_assert_max_num_queries(2):  # the extents of the series; its rollup rows
        selectors.chart_series(run, None, 2_000)


def test_charts_refuse_bad_sizes(api: APIClient, owner: User) -> None:
    run = make_run(owner)
    assert api.get(f"/api/v1/runs/{run.pk}/charts/?max_points=1").status_code == 400
    assert api.get(f"/api/v1/runs/{run.pk}/charts/?max_points=abc").status_code == 400
    assert api.get("/api/v1/runs/424242/charts/").status_code == 404


# -- safetensors preview --------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_the_preview_reads_tensors_and_metadata_from_the_header(
    api: APIClient, owner: User, settings: Any, tmp_path: Path
) -> None:
    settings.ARTIFACTS_DIR = tmp_path
    run = make_run(owner)
    write_safetensors(
        tmp_path / "model.safetensors", {"w": ("F32", [4, 8]), "b": ("F32", [8])}, {"final_val_loss": "1.25"}
    )
    artifact = Artifact.objects.create(
        run=run,
        attempt=1,
        name="model.safetensors",
        kind="model",
        size=1,
        sha256="0" * 64,
        storage_key="model.safetensors",
    )
    body = api.get(f"/api/v1/artifacts/{artifact.pk}/preview/").json()
    assert body["parameters"] == 40 and body["tensor_count"] == 2
    assert body["tensors"][0] == {"name": "b", "dtype": "F32", "shape": [8], "parameters": 8}
    assert body["metadata"] == {"final_val_loss": "1.25"}


def test_the_preview_says_why_there_is_none(
    api: APIClient, owner: User, settings: Any, tmp_path: Path
) -> None:
    settings.ARTIFACTS_DIR = tmp_path
    run = make_run(owner)
    text = Artifact.objects.create(
        run=run, attempt=1, name="notes.txt", kind="file", size=1, sha256="0" * 64, storage_key="notes.txt"
    )
    gone = Artifact.objects.create(
        run=run,
        attempt=1,
        name="gone.safetensors",
        kind="model",
        size=1,
        sha256="0" * 64,
        storage_key="gone.safetensors",
    )
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    bad = Artifact.objects.create(
        run=run,
        attempt=1,
        name="bad.safetensors",
        kind="model",
        size=8,
        sha256="0" * 64,
        storage_key="bad.safetensors",
    )
    assert api.get(f"/api/v1/artifacts/{text.pk}/preview/").status_code == 404
    assert api.get(f"/api/v1/artifacts/{gone.pk}/preview/").status_code == 410
    assert api.get(f"/api/v1/artifacts/{bad.pk}/preview/").status_code == 422
    assert api.get("/api/v1/artifacts/424242/preview/").status_code == 404


# -- the run list API's new filters ---------------------------------------------------------


def test_the_runs_api_filters_by_owner_program_and_name(api: APIClient, owner: User, teammate: User) -> None:
    mine = make_run(owner, name="Sweep lr", program="tinygpt")
    make_run(teammate, name="sweep other", program="tinygpt")
    make_run(owner, name="unrelated", program="scripted")
    body = api.get(f"/api/v1/runs/?owner={owner.username}&program=tinygpt&q=SWEEP").json()
    assert [run["id"] for run in body["results"]] == [mine.pk]
