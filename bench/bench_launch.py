"""Launch -> program started, with a free device, on the production topology.

bench/load_stack.py's stack (uvicorn, one Celery worker with the threads pool, Postgres, Redis) on
a throwaway database; the worker is a fleet worker of pool `default` with one CPU slot (no GPUs on
this machine: a slot is admitted, reserved and dispatched exactly as a GPU is). N runs of
`bench/fleet_program.py` are launched one at a time through `POST /api/v1/runs/`, each once the
previous one has ended, so the slot is free at every launch. For each: the launch request's
round trip, and launch response -> the program's first instant (its own `time.time()`, from its
record; the clocks are one machine's). p50 / p95 / max, target p95 < 1 s.

Usage: .venv/bin/python bench/bench_launch.py [--runs 30]
Set BENCH_REDIS_URL to a Redis database of your own.
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
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import load_stack  # noqa: E402
from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402

PROGRAMS = REPO / "bench" / "fleet_programs.toml"


def token() -> str:
    from django.contrib.auth import get_user_model

    from accounts.tokens import do_issue_token

    user = get_user_model().objects.create_superuser(
        "launch", "launch@example.invalid", secrets.token_urlsafe(24)
    )
    return do_issue_token(user, name="launch bench").plaintext


def wait_for(path: Path, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.01)
    raise RuntimeError(f"no record {path.name} after {timeout:.0f} s")


def wait_registered(timeout: float) -> None:
    from fleet.models import Worker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Worker.objects.exists():
            return
        time.sleep(0.2)
    raise RuntimeError("the worker did not register")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(share * len(ordered)) - 1)]


def bench(args: argparse.Namespace, db_name: str, data_dir: Path) -> int:
    os.environ["CONTROLPLANE_PROGRAMS_FILE"] = str(PROGRAMS)
    setup_django(db_name, data_dir, redis=True)
    bearer = token()
    out, logs = data_dir / "records", data_dir / "logs"
    out.mkdir()
    logs.mkdir()
    queue = f"bench-launch-{os.getpid()}"
    env = {
        "CONTROLPLANE_PROGRAMS_FILE": str(PROGRAMS),
        "CONTROLPLANE_WORKER_GPUS": "",
        "LOG_LEVEL": "WARNING",
    }
    stack = load_stack.start(queue, 1, logs, extra_env=env)
    round_trips, to_start = [], []
    try:
        load_stack.wait_web_ready(stack, timeout=120)
        wait_registered(timeout=120)
        with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {bearer}"}) as client:
            for n in range(args.runs + 1):
                sent = time.time()
                response = client.post(
                    "/api/v1/runs/",
                    json={
                        "name": f"launch-{n}",
                        "program": "fleetprobe",
                        "params": {"seconds": 0, "out": str(out)},
                    },
                    timeout=30,
                )
                answered = time.time()
                response.raise_for_status()
                record = wait_for(out / f"{response.json()['id']}-1.json", timeout=60)
                if n == 0:
                    continue  # the first launch warms the processes up; not counted
                round_trips.append(answered - sent)
                to_start.append(record["start"] - answered)
                time.sleep(0.3)  # the run ends, its slot is freed: the next launch finds it free
    finally:
        load_stack.stop(stack)
    print(f"{args.runs} launches, one at a time, each with the slot free (after one warm-up launch)")
    for name, values in (("launch round trip", round_trips), ("launch response -> program start", to_start)):
        p50, p95 = statistics.median(values) * 1000, percentile(values, 0.95) * 1000
        print(f"{name}: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(values) * 1000:.0f} ms")
    worst = percentile(to_start, 0.95)
    print(f"{'PASS' if worst < 1.0 else 'FAIL'}: p95 {worst * 1000:.0f} ms (target < 1000 ms)")
    return 0 if worst < 1.0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    db_name = f"bench_controlplane_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    create_database(db_name)
    try:
        return bench(args, db_name, data_dir)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception as error:
            print(f"(closing Django connections failed: {error!r})")
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
