"""One fleet scheduler pass (fleet.scheduler.schedule_pass) at fleet scale, on a throwaway database.

200 workers (rows, not processes) in 4 pools with 4 GPUs each (800 devices), 50 users, and N queued
runs (1-4 GPUs, priorities 0-100, ages spread over a day). For each N in --sizes:
- the first pass: admits what fits (up to 800 devices' worth) and writes reasons;
- then --passes steady passes on the full fleet (nothing fits; the common case while a queue is
  long): p50 / p95 / max, each followed by a pass of the old implementation
  (bench/scheduler_baseline.py) on the same rows: the ratio old/new holds on a loaded machine.
The Celery send on commit is replaced by a counter: the broker's cost is not the pass's. The
table is ANALYZEd after seeding, as autovacuum would have done on a queue that grew for a while.
--profile prints cProfile, each query's time and EXPLAIN ANALYZE of the first queue chunk's query
and of the unread tail's UPDATE.

Each invocation creates a throwaway database ``bench_controlplane_<pid>`` and drops it at the end.

Usage: .venv/bin/python bench/bench_scheduler.py [--sizes 1000,5000,10000] [--passes 10] [--profile]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
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

POOLS = ("a100", "h100", "l4", "default")


def seed_fleet(workers: int, gpus: int) -> None:
    from fleet.agent import register
    from fleet.inventory import DeviceSpec

    for n in range(workers):
        register(
            f"bench-{n}",
            POOLS[n % len(POOLS)],
            [DeviceSpec(i, "gpu", "Bench GPU", 2**35) for i in range(gpus)],
        )


def seed_runs(count: int, users: list[int], rng: random.Random) -> None:
    from django.utils import timezone

    from runs.models import Run

    now = timezone.now()
    Run.objects.filter(status="queued").delete()
    from fleet.models import Reservation

    Reservation.objects.all().delete()
    rows = [
        Run(
            name=f"q{i}",
            owner_id=rng.choice(users),
            program="tinygpt",
            queue="",
            status="queued",
            resources={"pool": rng.choice(POOLS), "gpus": rng.choice((1, 1, 2, 4))},
            priority=rng.randint(0, 100),
            created_at=now - timedelta(seconds=rng.randint(0, 86_400)),
        )
        for i in range(count)
    ]
    Run.objects.bulk_create(rows, batch_size=2000)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_run")


def timed_pass(baseline: bool = False) -> tuple[float, int]:
    from django.utils import timezone

    from bench import scheduler_baseline
    from fleet.models import Worker
    from fleet.scheduler import schedule_pass

    # The workers are rows nobody heartbeats: keep them live (outside the timing), or a bench
    # longer than the lease measures a fleet of lost workers.
    Worker.objects.update(heartbeat_at=timezone.now())
    started = time.perf_counter()
    report = scheduler_baseline.schedule_pass() if baseline else schedule_pass()
    return time.perf_counter() - started, len(report.placed)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def bench(args: argparse.Namespace, db_name: str, data_dir: Path) -> None:
    setup_django(db_name, data_dir, redis=False)
    from django.contrib.auth.models import User

    from fleet import scheduler
    from fleet.models import Quota

    sent: list[int] = []
    setattr(scheduler, "enqueue_run", lambda run_id, queue, request_id: sent.append(run_id))  # noqa: B010
    seed_fleet(args.workers, args.gpus)
    users = [User.objects.create_user(f"u{n}").pk for n in range(50)]
    Quota.objects.bulk_create([Quota(user_id=pk, max_gpus=10_000) for pk in users])
    rng = random.Random(12)
    print(f"fleet: {args.workers} workers x {args.gpus} GPUs in {len(POOLS)} pools; 50 users")
    print("steady passes alternate: the current pass, then the old one (bench/scheduler_baseline.py)")
    header = f"{'queued':>8} {'first pass':>11} {'placed':>7} {'p50':>7} {'p95':>7} {'max':>7}"
    print(f"{header} {'old p50':>8} {'old p95':>8} {'p95 old/new':>12}")
    for size in args.sizes:
        seed_runs(size, users, rng)
        first, placed = timed_pass()
        new: list[float] = []
        old: list[float] = []
        for _ in range(args.passes):
            new.append(timed_pass()[0])
            if args.baseline:
                old.append(timed_pass(baseline=True)[0])
        old_figures = (
            f"{statistics.median(old) * 1000:>6.0f}ms {p95(old) * 1000:>6.0f}ms {p95(old) / p95(new):>11.1f}x"
            if old
            else ""
        )
        print(
            f"{size:>8} {first * 1000:>9.0f}ms {placed:>7} {statistics.median(new) * 1000:>5.0f}ms "
            f"{p95(new) * 1000:>5.0f}ms {max(new) * 1000:>5.0f}ms {old_figures}"
        )
    if args.profile:
        profile_pass()


def profile_pass() -> None:
    """cProfile of one steady pass, and each query it sends with its time (the last size)."""
    import cProfile
    import pstats

    from django.db import connection

    queries: list[tuple[float, str]] = []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append((time.perf_counter() - started, sql))

    from fleet import scheduler, tail

    tail_args: list[tuple[Any, ...]] = []
    store = tail.store_tail_reasons

    def keep_args(*args: Any) -> int:
        tail_args.append(args)
        return store(*args)

    setattr(scheduler, "store_tail_reasons", keep_args)  # noqa: B010
    profiler = cProfile.Profile()
    with connection.execute_wrapper(timed):
        profiler.runcall(timed_pass)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    for seconds, sql in queries:
        print(f"{seconds * 1000:8.1f} ms  {' '.join(sql.split())[:150]}")
    from django.conf import settings
    from django.utils import timezone

    from fleet.placement import AGING_CAP
    from fleet.scheduler import QUEUE_CHUNK
    from fleet.snapshot import _POSTGRES_CHUNK

    params: dict[str, Any] = {
        "now": timezone.now(),
        "aging": float(str(settings.FLEET["AGING_MINUTES"])),
        "cap": AGING_CAP,
        "limit": QUEUE_CHUNK,  # the first chunk of the queue, as the pass reads it
        "after": 0,
        "effective": 0,
        "created": timezone.now(),
    }
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + _POSTGRES_CHUNK, params)
        print("\n".join(row[0] for row in cursor.fetchall()))
        if tail_args:  # the tail's UPDATE, as the profiled pass sent it (it changed nothing)
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + tail.TAIL_REASONS, tail.tail_params(*tail_args[0]))
            print("\n".join(row[0] for row in cursor.fetchall()))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000,10000", help="queued runs, comma-separated")
    parser.add_argument("--passes", type=int, default=10, help="steady passes per size")
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=4, help="GPUs per worker")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the old pass")
    parser.add_argument("--profile", action="store_true", help="profile one steady pass at the last size")
    args = parser.parse_args()
    args.sizes = [int(part) for part in args.sizes.split(",")]
    db_name = f"bench_controlplane_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    create_database(db_name)
    try:
        bench(args, db_name, data_dir)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception as error:
            print(f"(closing Django connections failed: {error!r})")
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
