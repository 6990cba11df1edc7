"""Dashboard server figures: chart series on a 1,000,000-point series, and the runs list at 10,000 runs.

(a) Chart series: ``GET /api/v1/runs/{id}/charts/?key=train/loss&max_points=2000`` against the
    real ASGI server (uvicorn subprocess, Redis cache, keep-alive httpx client, bearer token), on
    a finished run and on a running one, each with 1,000,000 points and one planted spike. Cold
    (empty cache) and warm requests; p50/p95/max of the warm ones. For comparison, the public
    ``/metrics/?key=...&max_points=2000`` endpoint (min/max over the whole series per request).
    Target: warm p95 < 100 ms, the spike in the answer, at most max_points values.
(b) Runs list: the ``/`` page with 10,000 runs (Django test client in-process, so the figure is
    server time: query, template, no network), for page sizes 25/50/100/200 and every sort,
    a filter, the 150th page reached by cursors; queries per page. Also the list's poll
    (``/api/v1/runs/states/?ids=<200 ids>``) over HTTP. Target: queries constant in page size.

Creates a throwaway database ``bench_dashboard_<pid>`` (dropped at the end); Redis db 12 unless
BENCH_REDIS_URL says otherwise (it is flushed: the cache must start cold).

Usage: .venv/bin/python bench/bench_dashboard.py [--points 1000000] [--runs 10000] [--requests 100]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throwaway import PG, create_database, drop_database  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
SPIKE_STEP = 777_777
SPIKE_VALUE = 1_000.0
TARGET_P95_MS = 100.0


# -- a throwaway database and a real server (shared with bench_dashboard_browser.py) --------


def bench_env(db_name: str, data_dir: Path) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{db_name}",
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "CONTROLPLANE_DATA_DIR": str(data_dir),
        "STATIC_ROOT": str(data_dir / "static"),
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
        "SECURE_COOKIES": "false",
    }


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.cache import cache
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    cache.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "controlplane.asgi:application",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not start; see {log}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def copy_points(db_name: str, series_id: int, count: int, start: datetime, spike_step: int | None) -> float:
    """COPY `count` points (a noisy decaying loss; one spike) into a series; returns seconds."""
    started = time.perf_counter()
    buffer = io.StringIO()
    with psycopg.connect(dbname=db_name, **PG) as conn, conn.cursor() as cur:
        with cur.copy("COPY runs_metricpoint (series_id, step, value, ts) FROM STDIN") as copy:
            for step in range(count):
                value = (
                    SPIKE_VALUE
                    if step == spike_step
                    else 4.0 / (1 + step / 50_000) + ((step * 7919) % 1000) / 5000
                )
                ts = (start + timedelta(milliseconds=10 * step)).isoformat()
                buffer.write(f"{series_id}\t{step}\t{value}\t{ts}\n")
                if buffer.tell() > 1 << 20:
                    copy.write(buffer.getvalue())
                    buffer.seek(0)
                    buffer.truncate()
            copy.write(buffer.getvalue())
        conn.commit()
    # The supervisor keeps rollups as it writes (runs/rollups.py); a bulk COPY builds them after.
    from runs.models import MetricPoint
    from runs.rollups import update_rollups

    steps = MetricPoint.objects.filter(series_id=series_id).values_list("series_id", "step")
    update_rollups(steps.iterator(chunk_size=50_000))
    with psycopg.connect(dbname=db_name, autocommit=True, **PG) as conn:
        conn.execute("VACUUM ANALYZE runs_metricpoint")
        conn.execute("VACUUM ANALYZE runs_metricrollup")
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- (a) chart series -----------------------------------------------------------------------


def time_get(client: httpx.Client, url: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return elapsed, body


def bench_charts(client: httpx.Client, runs: dict[str, int], requests: int) -> bool:
    from django.core.cache import cache

    ok = True
    print("\n(a) chart series, 1,000,000 points, max_points=2000 (ms, over HTTP, keep-alive)")
    print(f"    {'series':<34} {'cold':>7} {'p50':>7} {'p95':>7} {'max':>7} buckets  spike")
    for label, run_id in runs.items():
        url = f"/api/v1/runs/{run_id}/charts/?key=train/loss&max_points=2000"
        cache.clear()
        cold, body = time_get(client, url)
        warm = [time_get(client, url)[0] for _ in range(requests)]
        series = body["series"][0]
        # Buckets (issue #15): between max_points/2 and max_points of them, read from the rollups.
        values = len(series["steps"])
        spike = max(v for v in series["high"] if v is not None) == SPIKE_VALUE
        p95 = percentile(warm, 0.95)
        ok &= p95 < TARGET_P95_MS and cold < TARGET_P95_MS and spike and 1000 <= values <= 2000
        print(
            f"    {label:<34} {cold:>7.1f} {statistics.median(warm):>7.1f} {p95:>7.1f} {max(warm):>7.1f}"
            f"  {values:>6}  {'kept' if spike else 'LOST'}"
        )
    for label, run_id in runs.items():
        # The exact min/max endpoint, also from the rollups: the same target.
        url = f"/api/v1/runs/{run_id}/metrics/?key=train/loss&max_points=2000"
        times = [time_get(client, url)[0] for _ in range(requests)]
        ok &= percentile(times, 0.95) < TARGET_P95_MS
        print(
            f"    {'public /metrics/ (' + label + ')':<34} {'':>7} {statistics.median(times):>7.1f}"
            f" {percentile(times, 0.95):>7.1f} {max(times):>7.1f}   (min/max points)"
        )
    return ok


# -- (b) runs list --------------------------------------------------------------------------


def seed_runs(user: Any, count: int) -> None:
    from runs.models import Run, RunStatus

    now = datetime.now(UTC)
    statuses = [RunStatus.SUCCEEDED] * 6 + [
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.RUNNING,
        RunStatus.QUEUED,
    ]
    batch = []
    for i in range(count):
        status = statuses[i % len(statuses)]
        started = now - timedelta(minutes=count - i) if status != RunStatus.QUEUED else None
        finished = (
            started + timedelta(seconds=(i * 7919) % 3600)
            if started and status != RunStatus.RUNNING
            else None
        )
        batch.append(
            Run(
                name=f"sweep-{i % 97:02d}-lr{(i * 31) % 1000}",
                owner=user,
                program="tinygpt" if i % 3 else "finetune",
                queue="training",
                status=status,
                created_at=now - timedelta(minutes=count - i),
                started_at=started,
                finished_at=finished,
                progress_step=i % 200 if status == RunStatus.RUNNING else None,
                progress_total=200 if status == RunStatus.RUNNING else None,
                params={"steps": 200, "lr": 0.003},
            )
        )
    Run.objects.bulk_create(batch, batch_size=2_000)


def count_queries(client: Any, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(captured)


def time_html(http: httpx.Client, url: str, repeats: int = 9) -> tuple[float, str]:
    times = []
    text = ""
    for _ in range(repeats):
        started = time.perf_counter()
        response = http.get(url)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        text = response.text
    return statistics.median(times), text


def bench_list(user: Any, base: str, http: httpx.Client) -> bool:
    import re
    from html import unescape

    from django.conf import settings
    from django.test import Client
    from django.test.utils import setup_test_environment

    from runs.models import Run

    setup_test_environment()  # "testserver" in ALLOWED_HOSTS for the in-process query counts
    client = Client()
    client.force_login(user)
    # The same session over HTTP: the timed requests go through the real ASGI server.
    browser = httpx.Client(
        base_url=base,
        cookies={settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value},
    )
    print(
        f"\n(b) runs list, {Run.objects.count():,} runs: "
        "ms per page over HTTP (median of 9) / queries per page"
    )
    sizes = (25, 50, 100, 200)
    print(f"    {'sort or filter':<20}" + "".join(f"{size:>13}" for size in sizes))
    ok = True
    for query in (
        "sort=-created",
        "sort=created",
        "sort=status",
        "sort=name",
        "sort=-duration",
        "status=running",
        "q=lr99",
    ):
        cells = []
        counts = set()
        for size in sizes:
            url = f"/?{query}&page_size={size}"
            ms, _ = time_html(browser, url)
            queries = count_queries(client, url)
            counts.add(queries)
            cells.append(f"{ms:>7.1f} / {queries}")
        ok &= len(counts) == 1
        print(f"    {query:<20}" + "".join(f"{cell:>13}" for cell in cells))
    # Deep pages cost what the first does: follow "Next" 150 times, then time that page.
    url = "/?sort=-duration&page_size=50"
    pages = 1
    for _ in range(150):
        _, text = time_html(browser, url, repeats=1)
        found = re.search(r'href="([^"]+)" rel="next"', text)
        if not found:
            break
        url = "/" + unescape(found.group(1))
        pages += 1
    ms, _ = time_html(browser, url)
    print(
        f"    page {pages} of sort=-duration, 50 per page: {ms:.1f} ms / {count_queries(client, url)} queries"
    )
    ids = ",".join(str(pk) for pk in Run.objects.order_by("-id").values_list("pk", flat=True)[:200])
    times = [time_get(http, f"/api/v1/runs/states/?ids={ids}")[0] for _ in range(30)]
    print(
        f"    the list's poll, /api/v1/runs/states/ for 200 runs: p50 {statistics.median(times):.1f} ms,"
        f" p95 {percentile(times, 0.95):.1f} ms"
    )
    browser.close()
    return ok


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    db_name = f"bench_dashboard_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    create_database(db_name)
    server = None
    try:
        env = bench_env(db_name, data_dir)
        setup_django(env)
        from django.contrib.auth import get_user_model

        from accounts.tokens import do_issue_token
        from runs.models import MetricSeries, Run, RunStatus

        user = get_user_model().objects.create_user("bench", password=secrets.token_urlsafe(16))
        start = datetime.now(UTC) - timedelta(days=1)
        finished = Run.objects.create(
            name="finished",
            owner=user,
            program="tinygpt",
            queue="training",
            status=RunStatus.SUCCEEDED,
            attempt=1,
        )
        live = Run.objects.create(
            name="running",
            owner=user,
            program="tinygpt",
            queue="training",
            status=RunStatus.RUNNING,
            attempt=1,
        )
        for run in (finished, live):
            series = MetricSeries.objects.create(run=run, key="train/loss")
            seconds = copy_points(db_name, series.pk, args.points, start, SPIKE_STEP)
            print(f"seeded {args.points:,} points for the {run.name} run in {seconds:.1f} s")
        started = time.perf_counter()
        seed_runs(user, args.runs - 2)
        print(f"seeded {args.runs - 2:,} more runs in {time.perf_counter() - started:.1f} s")

        server, base = start_server(env, data_dir / "web.log")
        token = do_issue_token(user).plaintext
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            charts_ok = bench_charts(
                http,
                {
                    "finished run (cache: whole series)": finished.pk,
                    "running run (open chunk re-read)": live.pk,
                },
                args.requests,
            )
            list_ok = bench_list(user, base, http)
        ok = charts_ok and list_ok
        print(
            f"\n{'PASS' if ok else 'FAIL'}: chart p95 < {TARGET_P95_MS:.0f} ms with the spike kept; "
            "list queries constant"
        )
        return 0 if ok else 1
    finally:
        if server is not None:
            stop_server(server)
        from django.db import connections

        connections.close_all()
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
