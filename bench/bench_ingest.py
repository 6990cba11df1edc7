"""End-to-end metric ingest against a raw COPY of the same rows, in the same run.

(a) A real supervisor (`workers.supervisor.Supervisor(run).run()`, in this process, as a worker
    runs it) supervises `tests/workers/flood_program.py`, which reports N points as fast as the
    SDK's multi-point `metrics` lets it: timed from the claim to the outcome recorded, i.e. from
    program start to every point committed and readable (rollups included).
(b) A raw psycopg `COPY runs_metricpoint (series_id, step, value, ts) FROM STDIN` of the same
    N rows (one transaction), into another run's series.

Cases: 1,000,000 points of one key, and of 50 keys (20,000 steps). Target: (a)/(b) >= 0.5 in
rows/s. The supervisor's RSS growth (this process, sampled every 20 ms) must stay < 64 MiB.

Each invocation creates a throwaway database and drops it at the end.
Usage: .venv/bin/python bench/bench_ingest.py [--points 1000000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throwaway import PG, create_database, drop_database, setup_django  # noqa: E402

TARGET = 0.5
RSS_BOUND_MIB = 64
PROGRAMS = f"""
[programs.flood]
command = ["{sys.executable}", "-m", "tests.workers.flood_program"]
description = "flood"

[programs.flood.params]
seconds = {{ type = "number", default = 0, minimum = 0, maximum = 3600 }}
points = {{ type = "integer", default = 0, minimum = 0, maximum = 100000000 }}
keys = {{ type = "integer", default = 1, minimum = 1, maximum = 100 }}
per_line = {{ type = "integer", default = 1000, minimum = 1, maximum = 10000 }}
"""


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def lag_buckets() -> dict[float, float]:
    """The supervisor's stream-lag histogram (`controlplane_stream_lag_seconds`: per batch, its
    oldest line read → committed), cumulative counts by upper bound, from this process."""
    from prometheus_client import REGISTRY

    counts: dict[float, float] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "controlplane_stream_lag_seconds_bucket":
                counts[float(sample.labels["le"])] = sample.value
    return counts


def lag_p95(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket bound under which 95 % of the run's batches committed (the histogram's own
    resolution: 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2 s, ...)."""
    delta = {bound: after.get(bound, 0.0) - before.get(bound, 0.0) for bound in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    for bound, count in delta.items():
        if total and count >= 0.95 * total:
            return f"<= {bound:g} s over {total:.0f} batches"
    return "no batch"


def supervised(owner: Any, steps: int, keys: int) -> tuple[float, float, str]:
    """Seconds from claim to outcome, the peak RSS growth in MiB, and the stream lag's p95."""
    from runs.models import MetricPoint, Run
    from runs.programs import get_program, resolve_params
    from workers.supervisor import Supervisor

    program = get_program("flood")
    assert program is not None
    per_line = max(1, 8_000 // keys)
    params = resolve_params(program, {"points": steps, "keys": keys, "per_line": per_line})
    run = Run.objects.create(name="bench", owner=owner, program="flood", params=params, queue="bench")
    base = rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lags = lag_buckets()
    started = time.perf_counter()
    outcome = Supervisor(run.pk).run()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    # The program's own points: the supervisor's system/* samples are not part of the ingest.
    stored = MetricPoint.objects.filter(series__run=run).exclude(series__key__startswith="system/").count()
    assert outcome == "succeeded" and stored == steps * keys, (outcome, stored)
    return elapsed, (peak[0] - base) / 2**20, lag_p95(lags, lag_buckets())


def raw_copy(db_name: str, owner_id: int, steps: int, keys: int) -> float:
    from runs.models import MetricSeries, Run

    run = Run.objects.create(name="copy", owner_id=owner_id, program="flood", params={}, queue="bench")
    series = [MetricSeries.objects.create(run=run, key=f"k{i:02d}").pk for i in range(keys)]
    now = datetime.now(UTC)
    with psycopg.connect(dbname=db_name, **PG) as conn:
        started = time.perf_counter()
        with (
            conn.cursor() as cursor,
            cursor.copy("COPY runs_metricpoint (series_id, step, value, ts) FROM STDIN") as copy,
        ):
            for step in range(steps):
                for series_id in series:
                    copy.write_row((series_id, step, float(step % 997), now))
        conn.commit()
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    db_name = f"bench_controlplane_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    programs = data_dir / "programs.toml"
    programs.write_text(PROGRAMS)
    os.environ["CONTROLPLANE_PROGRAMS_FILE"] = str(programs)
    os.environ["CONTROLPLANE_RUNS_DIR"] = str(data_dir / "runs")
    create_database(db_name)
    try:
        setup_django(db_name, data_dir, redis=True)
        from django.contrib.auth.models import User

        owner = User.objects.create_user("bench", password=secrets.token_urlsafe(16))
        verdict = True
        print(f"load average: {os.getloadavg()}")
        for keys in (1, 50):
            steps = args.points // keys
            for _ in range(args.repeats):
                copy_s = raw_copy(db_name, owner.pk, steps, keys)
                ours_s, growth, lag = supervised(owner, steps, keys)
                ratio = copy_s / ours_s
                ok = ratio >= TARGET and growth < RSS_BOUND_MIB
                verdict &= ok
                print(
                    f"{steps * keys:,} points, {keys} key(s): end to end "
                    f"{steps * keys / ours_s:,.0f} points/s "
                    f"({ours_s:.1f} s), raw COPY {steps * keys / copy_s:,.0f} rows/s ({copy_s:.1f} s), "
                    f"ratio {ratio:.3f}; supervisor RSS growth {growth:.1f} MiB; stream lag p95 {lag} "
                    f"-- {'PASS' if ok else 'FAIL'}"
                )
        print("PASS" if verdict else "FAIL")
        return 0 if verdict else 1
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
