"""Waiting reasons on the runs list: queue positions read per run (one COUNT each, the baseline)
against one read per page (`fleet.selectors._queue_positions`), with N queued runs waiting for
admission in two pools.

Prints, measured in the same run on the same data: the time to compute the positions of a
200-run page both ways and their ratio; the `/?page_size=200` page and the list's poll
(`/api/v1/runs/states/?ids=<200 ids>`) through Django's test client (server time: queries and
template, no network), with their query counts. Target: queries per page constant in the
number of waiting runs; the positions identical both ways.

Creates a throwaway database (dropped at the end). Usage:
.venv/bin/python bench/bench_waiting_list.py [--runs 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402


def seed(count: int) -> Any:
    from django.utils import timezone

    from fleet.agent import register
    from fleet.inventory import DeviceSpec
    from fleet.models import DeviceKind
    from runs.models import Run
    from tests.conftest import make_user

    owner = make_user("bench-owner", "operator")
    for name, pool in (("bench-a", "a100"), ("bench-h", "h100")):
        register(name, pool, [DeviceSpec(i, DeviceKind.GPU) for i in range(4)])
    start = timezone.now() - timedelta(hours=1)
    Run.objects.bulk_create(
        [
            Run(
                name=f"w{i}",
                owner=owner,
                program="scripted",
                queue="",
                resources={"pool": "a100" if i % 3 else "h100", "gpus": 1 + i % 4},
                priority=(i * 37) % 101,
                created_at=start + timedelta(milliseconds=i),
            )
            for i in range(count)
        ],
        batch_size=1000,
    )
    return owner


def timed(repeat: int, action: Any) -> tuple[float, Any]:
    """Median milliseconds of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    db_name = f"bench_waiting_{os.getpid()}"
    create_database(db_name)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            setup_django(db_name, Path(data_dir), redis=False)
            run_bench(args.runs, args.repeat)
    finally:
        drop_database(db_name)


def run_bench(count: int, repeat: int) -> None:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from fleet.selectors import _queue_position, _queue_positions
    from runs.models import Run

    owner = seed(count)
    page = list(Run.objects.order_by("-id")[:200])
    per_run_ms, one_by_one = timed(repeat, lambda: {run.pk: _queue_position(run) for run in page})
    bulk_ms, in_bulk = timed(repeat, lambda: _queue_positions(page))
    assert one_by_one == in_bulk, "the two readings disagree"
    print(f"{count} queued runs waiting; positions of a 200-run page:")
    print(f"  one COUNT per run (baseline): {per_run_ms:8.1f} ms (200 queries)")
    print(f"  one read per page:            {bulk_ms:8.1f} ms (1 query)")
    print(f"  ratio baseline / bulk:        {per_run_ms / bulk_ms:8.1f}x; positions identical")

    setup_test_environment()  # "testserver" in ALLOWED_HOSTS for the in-process client
    client = Client()
    client.force_login(owner)
    ids = ",".join(str(run.pk) for run in page)
    for label, url in (
        ("runs list /?page_size=200", "/?page_size=200"),
        ("poll runs/states/", f"/api/v1/runs/states/?ids={ids}"),
    ):
        client.get(url)
        with CaptureQueriesContext(connection) as queries:
            ms, response = timed(repeat, lambda url=url: client.get(url))
        assert response.status_code == 200, (url, response.status_code, response.get("Location"))
        print(f"  {label:28s} {ms:8.1f} ms median, {len(queries) // repeat} queries")


if __name__ == "__main__":
    main()
