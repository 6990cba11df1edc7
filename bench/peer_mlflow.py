"""The product against MLflow, side by side on this machine, in one run (not in CI).

Ours: the production topology of bench/load_stack.py (uvicorn + a Celery worker with the threads
pool, Redis, Postgres), on a throwaway database. MLflow: ``mlflow server`` of a pinned version
(bench/mlflow_peer.py installs it into a cached virtualenv), on a throwaway Postgres database of
its own, with proxied artifacts. Both serve at once; measurements alternate between them.

- ingest, 1 key and 50 keys: ours = a program (tests/workers/flood_program.py) launched through
  ``POST /api/v1/runs/`` reporting N points through the SDK, timed from the POST until the run is
  ``succeeded`` (every point committed and readable); MLflow = ``runs/create``, N points as
  ``runs/log-batch`` requests of 1,000 metrics (as its client sends them), ``runs/update``;
- chart of a series with a planted spike, cold (first request) and warm (p50 of the rest): ours
  ``/charts/?max_points=2000``, MLflow ``metrics/get-history`` (its client draws from the whole
  series); both must contain the spike;
- full read of that series: ours the keyset pages of ``/metrics/?key=&limit=100000`` (``next``),
  MLflow ``get-history`` following ``next_page_token``;
- artifact download of one file: ours ``/api/v1/artifacts/{id}/download/``, MLflow
  ``/api/2.0/mlflow-artifacts/artifacts/...`` (uploaded through its proxy first).

Prints each figure and the ratio ours/MLflow: for rates higher is better for us, for times lower.
The default sizes are small because MLflow is slow at them (~300 points/s of log-batch and
seconds per get-history on the shared 2-core machine: docs/benchmarks.md); raise them on a
quiet machine.
Usage: .venv/bin/python bench/peer_mlflow.py [--points 50000] [--chart-points 50000]
       [--download-mib 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import load_stack, mlflow_peer  # noqa: E402
from bench.bench_dashboard import SPIKE_VALUE, copy_points  # noqa: E402
from bench.bench_download import make_file  # noqa: E402
from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402

PROGRAMS = f"""
[programs.flood]
command = ["{sys.executable}", "-m", "tests.workers.flood_program"]
description = "Reports N points as fast as the SDK takes them"

[programs.flood.params]
seconds = {{ type = "number", default = 0, minimum = 0, maximum = 3600 }}
points = {{ type = "integer", default = 0, minimum = 0, maximum = 100000000 }}
keys = {{ type = "integer", default = 1, minimum = 1, maximum = 100 }}
per_line = {{ type = "integer", default = 1000, minimum = 1, maximum = 10000 }}
"""
CHART_KEY = "train/loss"
MIB = 1024 * 1024
Row = tuple[str, float, float, str]  # (what, ours, MLflow, unit); unit says which way is better


def series_value(step: int, spike_step: int) -> float:
    """The values bench_dashboard.copy_points writes: a noisy decaying loss with one spike."""
    if step == spike_step:
        return SPIKE_VALUE
    return 4.0 / (1 + step / 50_000) + ((step * 7919) % 1000) / 5000


# -- ingest -----------------------------------------------------------------------------------


def ours_ingest(http: httpx.Client, steps: int, keys: int) -> float:
    from runs.models import MetricPoint

    params = {"points": steps, "keys": keys, "per_line": max(1, 8_000 // keys)}
    started = time.perf_counter()
    created = http.post(
        "/api/v1/runs/", json={"name": f"ingest-{keys}", "program": "flood", "params": params}
    )
    created.raise_for_status()
    run_id = created.json()["id"]
    while True:
        status = http.get(f"/api/v1/runs/{run_id}/").json()["status"]
        if status not in {"queued", "running", "cancelling"}:
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    own = MetricPoint.objects.filter(series__run_id=run_id).exclude(series__key__startswith="system/")
    stored = own.count()
    if status != "succeeded" or stored != steps * keys:
        raise RuntimeError(f"ours: run {run_id} {status} with {stored:,} points of {steps * keys:,}")
    return elapsed


def mlflow_ingest(client: mlflow_peer.Client, db_name: str, steps: int, keys: int) -> float:
    started = time.perf_counter()
    _, run_id = client.new_run(f"ingest-{keys}-{secrets.token_hex(4)}")
    client.log_points(run_id, steps, keys)
    client.finish(run_id)
    elapsed = time.perf_counter() - started
    stored = mlflow_peer.stored_points(db_name, run_id)
    if stored != steps * keys:
        raise RuntimeError(f"mlflow: {stored:,} points of {steps * keys:,}")
    return elapsed


def bench_ingest(
    http: httpx.Client, client: mlflow_peer.Client, db: str, points: int, repeats: int
) -> list[Row]:
    ours_ingest(http, 100, 1)  # warm-up: the worker's first task, the program's first start
    mlflow_ingest(client, db, 100, 1)
    rows: list[Row] = []
    for keys in (1, 50):
        steps = points // keys
        ours_s, theirs_s = [], []
        for _ in range(repeats):
            ours_s.append(ours_ingest(http, steps, keys))
            theirs_s.append(mlflow_ingest(client, db, steps, keys))
        total = steps * keys
        rows.append(
            (
                f"ingest {total:,} points, {keys} key(s)",
                total / statistics.median(ours_s),
                total / statistics.median(theirs_s),
                "points/s",
            )
        )
        print(f"  {rows[-1][0]}: ours {rows[-1][1]:,.0f}/s, MLflow {rows[-1][2]:,.0f}/s", flush=True)
    return rows


# -- reads ------------------------------------------------------------------------------------


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def ours_chart(http: httpx.Client, run_id: int) -> bool:
    response = http.get(f"/api/v1/runs/{run_id}/charts/", params={"key": CHART_KEY, "max_points": 2000})
    response.raise_for_status()
    series = response.json()["series"][0]
    return SPIKE_VALUE in [*series["values"], *(series.get("high") or [])]


def ours_full_read(http: httpx.Client, run_id: int) -> int:
    url: str | None = f"/api/v1/runs/{run_id}/metrics/?key={CHART_KEY}&limit=100000"
    count = 0
    while url:
        page = http.get(url)
        page.raise_for_status()
        body = page.json()
        count += len(body["points"])
        url = body["next"]
    return count


def bench_reads(
    http: httpx.Client, client: mlflow_peer.Client, ours_run: int, theirs_run: str, warm: int
) -> list[Row]:
    ours_cold, ours_spike = timed(lambda: ours_chart(http, ours_run))
    theirs_cold, history = timed(lambda: client.history(theirs_run, CHART_KEY))
    theirs_spike = max(point["value"] for point in history) == SPIKE_VALUE
    ours_warm, theirs_warm, ours_full, theirs_full = [], [], [], []
    for _ in range(warm):
        ours_warm.append(timed(lambda: ours_chart(http, ours_run))[0])
        ours_full.append(timed(lambda: ours_full_read(http, ours_run))[0])
        theirs_warm.append(timed(lambda: client.history(theirs_run, CHART_KEY))[0])
    theirs_full = theirs_warm  # for MLflow the chart is the full read: get-history of every point
    count = ours_full_read(http, ours_run)
    print(f"  spike kept: ours {ours_spike}, MLflow {theirs_spike}; full read {count:,} / {len(history):,}")
    if not (ours_spike and theirs_spike and count == len(history)):
        raise RuntimeError("a chart lost the spike or a full read lost points")
    return [
        ("chart, cold (first request)", ours_cold, theirs_cold, "ms"),
        ("chart, warm (p50)", statistics.median(ours_warm), statistics.median(theirs_warm), "ms"),
        (
            f"full read of {count:,} points (p50)",
            statistics.median(ours_full),
            statistics.median(theirs_full),
            "ms",
        ),
    ]


def bench_download(
    http: httpx.Client, client: mlflow_peer.Client, ours_url: str, theirs_url: str, size: int, repeats: int
) -> list[Row]:
    def fetch(target: httpx.Client, url: str) -> float:
        received = 0
        started = time.perf_counter()
        with target.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes(MIB):
                received += len(chunk)
        if received != size:
            raise RuntimeError(f"{url}: {received:,} bytes of {size:,}")
        return time.perf_counter() - started

    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(fetch(http, ours_url))
        theirs_s.append(fetch(client.http, theirs_url))
    mib = size / MIB
    return [
        (
            f"download {mib:,.0f} MiB",
            mib / statistics.median(ours_s),
            mib / statistics.median(theirs_s),
            "MiB/s",
        )
    ]


# -- the run ----------------------------------------------------------------------------------


def seed(
    args: argparse.Namespace, db: str, owner: Any, client: mlflow_peer.Client, data_dir: Path
) -> dict[str, Any]:
    """The chart series (same values, same spike) and the download file in both products."""
    from django.conf import settings

    from runs.models import Artifact, MetricSeries, Run, RunStatus

    spike = args.chart_points * 7 // 9
    run = Run.objects.create(
        name="peer", owner=owner, program="flood", queue="peer", status=RunStatus.SUCCEEDED, attempt=1
    )
    series = MetricSeries.objects.create(run=run, key=CHART_KEY)
    copy_points(os.environ["BENCH_OURS_DB"], series.pk, args.chart_points, _day_ago(), spike)
    experiment_id, theirs_run = client.new_run(f"reads-{secrets.token_hex(4)}")
    mlflow_peer.copy_series(
        db, theirs_run, CHART_KEY, [series_value(s, spike) for s in range(args.chart_points)]
    )
    size = args.download_mib * MIB
    key = f"{run.pk}/1/model.bin"
    path = Path(settings.ARTIFACTS_DIR) / key
    sha256 = make_file(path, size, "random")
    artifact = Artifact.objects.create(
        run=run, attempt=1, name="model.bin", kind="model", size=size, sha256=sha256, storage_key=key
    )
    theirs_url = client.upload(experiment_id, theirs_run, "model.bin", path)
    return {
        "ours_run": run.pk,
        "theirs_run": theirs_run,
        "ours_url": f"/api/v1/artifacts/{artifact.pk}/download/",
        "theirs_url": theirs_url,
        "size": size,
    }


def _day_ago() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(days=1)


def report(rows: list[Row]) -> None:
    print(f"\n{'':<40} {'ours':>12} {'MLflow':>12} {'ours/MLflow':>12}")
    for what, ours, theirs, unit in rows:
        better = "higher is better" if unit.endswith("/s") else "lower is better"
        print(f"{what:<40} {ours:>12,.1f} {theirs:>12,.1f} {ours / theirs:>12.3f}  {unit}, {better}")


def run_bench(
    args: argparse.Namespace, ours_db: str, theirs_db: str, data_dir: Path, stack: contextlib.ExitStack
) -> None:
    executable = mlflow_peer.ensure_installed()
    setup_django(ours_db, data_dir, redis=True)
    from django.contrib.auth import get_user_model

    from accounts.tokens import do_issue_token

    # A superuser, as in the load test: it launches whatever roles come to be.
    owner = get_user_model().objects.create_superuser(
        "bench", "bench@example.invalid", secrets.token_urlsafe(24)
    )
    programs = data_dir / "programs.toml"
    programs.write_text(PROGRAMS)
    logs = data_dir / "logs"
    logs.mkdir()
    ours = load_stack.start(f"peer-{os.getpid()}", 1, logs, programs)
    stack.callback(load_stack.stop, ours)
    port = load_stack.free_port()
    theirs = mlflow_peer.start(executable, theirs_db, data_dir / "mlartifacts", port, logs / "mlflow.log")
    stack.callback(_stop_group, theirs)
    print(f"ours ready in {load_stack.wait_web_ready(ours, 60):.1f} s", flush=True)
    base = f"http://127.0.0.1:{port}"
    ready = mlflow_peer.wait_ready(base, theirs, logs / "mlflow.log")
    print(f"MLflow {mlflow_peer.MLFLOW_VERSION} ready in {ready:.1f} s")
    auth = {"Authorization": f"Bearer {do_issue_token(owner).plaintext}"}
    http = stack.enter_context(httpx.Client(base_url=ours.base_url, headers=auth, timeout=300))
    client = mlflow_peer.Client(base)
    stack.callback(client.close)
    print(f"load average {os.getloadavg()}", flush=True)
    rows = bench_ingest(http, client, theirs_db, args.points, args.ingest_repeats)
    seeded = seed(args, theirs_db, owner, client, data_dir)
    rows += bench_reads(http, client, seeded["ours_run"], seeded["theirs_run"], args.repeats)
    rows += bench_download(
        http, client, seeded["ours_url"], seeded["theirs_url"], seeded["size"], args.repeats
    )
    print(f"load average {os.getloadavg()}")
    report(rows)


def _stop_group(process: Any) -> None:
    """mlflow server leads its own session (its uvicorn workers are in it): end the group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except Exception:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=50_000, help="points per ingest case")
    parser.add_argument("--chart-points", type=int, default=50_000, help="points of the charted series")
    parser.add_argument("--download-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="warm reads and downloads of each")
    parser.add_argument("--ingest-repeats", type=int, default=1)
    args = parser.parse_args()
    ours_db, theirs_db = f"bench_peer_{os.getpid()}", f"bench_mlflow_{os.getpid()}"
    os.environ["BENCH_OURS_DB"] = ours_db
    data_dir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    create_database(ours_db)
    create_database(theirs_db)
    try:
        with contextlib.ExitStack() as stack:
            run_bench(args, ours_db, theirs_db, data_dir, stack)
        return 0
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        drop_database(ours_db)
        drop_database(theirs_db)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
