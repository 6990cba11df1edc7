"""Tracking mode against MLflow: points/s of a script logging into a run from outside (not in CI).

Ours: the production web process (bench/load_stack.py: uvicorn on a throwaway Postgres database,
Redis) and, in this process, the SDK a script uses (`workers.sdk.Reporter.over_http`, the same
file the client ships): `POST /api/v1/runs/` with `"program": null`, then N points, then
`finish()`, timed until `finish()` returns (every batch accepted: committed, readable), and the
stored count checked. Two ways of logging: `log({...}, step=s)` once per step (what a training
loop does; the SDK batches), and `metrics([...])` (many steps a call, the columnar form).

MLflow: `mlflow server` of a pinned version on a throwaway Postgres database
(bench/mlflow_peer.py), `runs/create`, the points as `runs/log-batch` requests of 1,000 metrics
(its limit; what `MlflowClient.log_batch` sends), `runs/update`; the stored count checked. MLflow
takes about an hour for 1,000,000 points on the shared 2-core machine, so by default it logs a
subset (`--mlflow-points`, the same keys, fewer steps) and its rate stands for the whole: said so
in the output. `--mlflow-points 1000000` measures it all.

Usage: .venv/bin/python bench/bench_tracking.py [--steps 100000] [--keys 10] [--mlflow-points 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import load_stack, mlflow_peer  # noqa: E402
from bench.peer_mlflow import _stop_group  # noqa: E402
from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402


def ours(http: httpx.Client, base: str, steps: int, keys: int, columnar: bool) -> float:
    from runs.models import MetricPoint
    from workers.sdk import Reporter

    names = [f"k{i:02d}" for i in range(keys)]
    started = time.perf_counter()
    created = http.post("/api/v1/runs/", json={"name": f"tracking-{keys}", "program": None})
    created.raise_for_status()
    run_id = created.json()["id"]
    run = Reporter.over_http(base, run_id, created.json()["run_token"])
    if columnar:
        run.metrics((step, {name: float(step % 997) for name in names}) for step in range(steps))
    else:
        for step in range(steps):
            run.log({name: float(step % 997) for name in names}, step=step)
    run.finish()
    elapsed = time.perf_counter() - started
    stored = MetricPoint.objects.filter(series__run_id=run_id).count()
    status = http.get(f"/api/v1/runs/{run_id}/").json()["status"]
    if stored != steps * keys or status != "succeeded":
        raise RuntimeError(f"ours: run {run_id} {status} with {stored:,} points of {steps * keys:,}")
    return elapsed


def theirs(client: mlflow_peer.Client, db: str, steps: int, keys: int) -> float:
    started = time.perf_counter()
    _, run_id = client.new_run(f"tracking-{keys}-{secrets.token_hex(4)}")
    client.log_points(run_id, steps, keys)
    client.finish(run_id)
    elapsed = time.perf_counter() - started
    stored = mlflow_peer.stored_points(db, run_id)
    if stored != steps * keys:
        raise RuntimeError(f"mlflow: {stored:,} points of {steps * keys:,}")
    return elapsed


def run_bench(args: argparse.Namespace, ours_db: str, theirs_db: str, data_dir: Path, stack: Any) -> None:
    executable = mlflow_peer.ensure_installed()
    setup_django(ours_db, data_dir, redis=True)
    from django.contrib.auth import get_user_model

    from accounts.tokens import do_issue_token

    owner = get_user_model().objects.create_superuser(
        "bench", "bench@example.invalid", secrets.token_urlsafe(24)
    )
    logs = data_dir / "logs"
    logs.mkdir()
    product = load_stack.start(f"tracking-{os.getpid()}", 1, logs)
    stack.callback(load_stack.stop, product)
    port = load_stack.free_port()
    peer = mlflow_peer.start(executable, theirs_db, data_dir / "mlartifacts", port, logs / "mlflow.log")
    stack.callback(_stop_group, peer)
    load_stack.wait_web_ready(product, 60)
    mlflow_peer.wait_ready(f"http://127.0.0.1:{port}", peer, logs / "mlflow.log")
    auth = {"Authorization": f"Bearer {do_issue_token(owner).plaintext}"}
    http = stack.enter_context(httpx.Client(base_url=product.base_url, headers=auth, timeout=300))
    client = mlflow_peer.Client(f"http://127.0.0.1:{port}")
    stack.callback(client.close)
    ours(http, product.base_url, 100, args.keys, False)  # warm-up
    theirs(client, theirs_db, 100, args.keys)
    print(f"load average {os.getloadavg()}", flush=True)
    total = args.steps * args.keys
    per_step = total / ours(http, product.base_url, args.steps, args.keys, False)
    print(f"ours, log() per step:  {total:,} points, {per_step:,.0f} points/s", flush=True)
    columnar = total / ours(http, product.base_url, args.steps, args.keys, True)
    print(f"ours, metrics():       {total:,} points, {columnar:,.0f} points/s", flush=True)
    subset_steps = max(1, min(args.steps, args.mlflow_points // args.keys))
    subset = subset_steps * args.keys
    mlflow_rate = subset / theirs(client, theirs_db, subset_steps, args.keys)
    note = (
        ""
        if subset == total
        else f" (measured on {subset:,} of the {total:,} points; its rate stands for all)"
    )
    print(f"MLflow log-batch:      {mlflow_rate:,.0f} points/s{note}", flush=True)
    print(f"load average {os.getloadavg()}")
    print(
        f"ratio ours/MLflow: log() per step {per_step / mlflow_rate:.1f}x, "
        f"metrics() {columnar / mlflow_rate:.1f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--mlflow-points", type=int, default=20_000, help="points MLflow logs (a subset)")
    args = parser.parse_args()
    ours_db, theirs_db = f"bench_tracking_{os.getpid()}", f"bench_tracking_mlflow_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
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
