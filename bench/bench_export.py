"""Memory of the ASGI server while it streams a 1,000,000-point series (NDJSON and CSV).

Seeds one series with ``COPY`` (a decaying loss with one spike), serves it through the real server
(``uvicorn controlplane.asgi:application``, a subprocess) at
``/api/v1/runs/<id>/metrics/export/?key=train/loss&format=ndjson|csv`` with a bearer token, and
samples the server's resident set (VmRSS of the process tree, every 50 ms) while an httpx client
streams the body, checking every line (each step exactly once, in order, the spike's value).

Baseline for memory: the server's RSS after one warm-up export of a small series. Target: growth
under 64 MiB for each format. Baseline for speed, in the same run: Postgres' own
``COPY (SELECT step, value ... ORDER BY step) TO STDOUT`` of the same series (CSV), read by psycopg;
the ratio export/COPY is printed (no target: it says what streaming through Django costs).

Each invocation creates a throwaway database ``bench_export_<pid>`` and removes it at the end.
Usage: .venv/bin/python bench/bench_export.py [--points 1000000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_dashboard import SPIKE_STEP, SPIKE_VALUE, copy_points  # noqa: E402
from bench.bench_download import (  # noqa: E402
    SAMPLE_EVERY,
    Sampler,
    free_port,
    rss_mib,
    start_server,
    stop_server,
    wait_ready,
)
from bench.throwaway import PG, create_database, drop_database, setup_django  # noqa: E402

TARGET_GROWTH_MIB = 64.0
KEY = "train/loss"


def parse_line(kind: str, line: str) -> tuple[int, str]:
    """(step, the value's text) of one line, cheaply: the client shares the server's two cores."""
    if kind == "csv":
        step, _, value = line.partition(",")
        return int(step), value
    head, _, value = line.partition(', "value": ')
    return int(head[9:]), value[:-1]


def export_once(
    client: httpx.Client, pid: int, url: str, kind: str, points: int
) -> tuple[float, float, float, list[str]]:
    """(seconds, baseline MiB, peak MiB, failures) of one export, every line checked."""
    settle = []
    for _ in range(10):
        settle.append(rss_mib(pid))
        time.sleep(SAMPLE_EVERY)
    baseline = statistics.median(settle)
    failures: list[str] = []
    expected = 0
    sampler = Sampler(pid)
    sampler.start()
    started = time.perf_counter()
    try:
        with client.stream("GET", url, params={"key": KEY, "format": kind}) as response:
            if response.status_code != 200:
                failures.append(f"{kind} export answered {response.status_code}")
            lines = response.iter_lines()
            if kind == "csv" and next(lines, "") != "step,value":
                failures.append("the CSV header is missing")
            for text in lines:
                step, value = parse_line(kind, text)
                if step != expected:
                    failures.append(f"{kind}: step {step} where {expected} was expected")
                    break
                if step == SPIKE_STEP and float(value) != SPIKE_VALUE:
                    failures.append(f"{kind}: the spike reads {value}")
                if step == 0 and kind == "ndjson" and json.loads(text) != {"step": 0, "value": float(value)}:
                    failures.append(f"ndjson: the first line is not JSON: {text!r}")
                expected += 1
    finally:
        elapsed = time.perf_counter() - started
        samples = sampler.stop()
    if expected != points and not failures:
        failures.append(f"{kind}: {expected:,} points read, {points:,} expected")
    return elapsed, baseline, max(samples), failures


def database_copy(db_name: str, series_id: int) -> tuple[float, int]:
    """Seconds and bytes of Postgres' own CSV export of the series, read by the client."""
    received = 0
    query = (
        "COPY (SELECT step, value FROM runs_metricpoint WHERE series_id = %s ORDER BY step) "
        "TO STDOUT WITH (FORMAT csv)"
    )
    with psycopg.connect(dbname=db_name, **PG) as conn, conn.cursor() as cursor:
        started = time.perf_counter()
        with cursor.copy(query, (series_id,)) as copy:
            for block in copy:
                received += len(block)
        return time.perf_counter() - started, received


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="exports of each format, interleaved")
    args = parser.parse_args()
    db_name = f"bench_export_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    create_database(db_name)
    try:
        return bench(args, db_name, data_dir)
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)


def bench(args: argparse.Namespace, db_name: str, data_dir: Path) -> int:
    setup_django(db_name, data_dir, redis=True)
    from django.contrib.auth import get_user_model

    from accounts.tokens import do_issue_token
    from runs.models import MetricSeries, Run, RunStatus

    user = get_user_model().objects.create_user("bench", password=secrets.token_urlsafe(16))
    run = Run.objects.create(
        name="export", owner=user, program="bench", queue="bench", status=RunStatus.SUCCEEDED, attempt=1
    )
    warm_run = Run.objects.create(
        name="warm", owner=user, program="bench", queue="bench", status=RunStatus.SUCCEEDED, attempt=1
    )
    start = datetime.now(UTC) - timedelta(days=1)
    series = MetricSeries.objects.create(run=run, key=KEY)
    seconds = copy_points(db_name, series.pk, args.points, start, SPIKE_STEP)
    print(f"load average {os.getloadavg()}; seeded {args.points:,} points in {seconds:.1f} s")
    copy_points(db_name, MetricSeries.objects.create(run=warm_run, key=KEY).pk, 20_000, start, None)
    token = do_issue_token(user).plaintext

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, data_dir / "server.log")
    verdict = True
    try:
        wait_ready(base, server)
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=auth, timeout=httpx.Timeout(60.0)) as client:
            for kind in ("ndjson", "csv"):  # the warm-up: every code path once, on a small series
                export_once(client, server.pid, f"/api/v1/runs/{warm_run.pk}/metrics/export/", kind, 20_000)
            for _ in range(args.repeats):
                copy_s, copy_bytes = database_copy(db_name, series.pk)
                print(
                    f"baseline: Postgres COPY ... TO STDOUT (csv) {args.points / copy_s:,.0f} points/s "
                    f"({copy_s:.2f} s, {copy_bytes / 2**20:.1f} MiB)"
                )
                for kind in ("ndjson", "csv"):
                    elapsed, baseline, peak, failures = export_once(
                        client, server.pid, f"/api/v1/runs/{run.pk}/metrics/export/", kind, args.points
                    )
                    growth = peak - baseline
                    ok = growth < TARGET_GROWTH_MIB and not failures
                    verdict &= ok
                    print(
                        f"{kind:>6}: {args.points / elapsed:,.0f} points/s ({elapsed:.2f} s), "
                        f"ratio to COPY {copy_s / elapsed:.3f}; server RSS baseline {baseline:.1f} MiB, "
                        f"peak {peak:.1f} MiB, growth {growth:.1f} MiB -- {'PASS' if ok else 'FAIL'}"
                    )
                    for failure in failures:
                        print(f"  check failed: {failure}")
    except Exception:
        print("server log tail:\n" + (data_dir / "server.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        stop_server(server)
    print(
        f"{'PASS' if verdict else 'FAIL'}: server RSS growth < {TARGET_GROWTH_MIB:.0f} MiB "
        f"while exporting {args.points:,} points, every point read once in order"
    )
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
