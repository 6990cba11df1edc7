"""The fleet end to end: 3 real Celery worker processes with fake GPUs, 200 short runs.

Workers (each stands for a host: its programs get a HOME of their own): `fa1` and `fa2` in pool
`a` with GPUs 0-3 each, `fb1` in pool `b` with GPUs 0-1 (`CONTROLPLANE_WORKER_GPUS`; no NVML here,
so the declaration is taken as it is). 200 runs of `bench/fleet_program.py` (it records its own
`CUDA_VISIBLE_DEVICES`, host, start and end) are launched at once through the service layer, by
four operators (quotas: alice 2 GPUs, bob 3, dave 4; carol has the operator default 8), with 1-4
GPUs in `a` or 1-2 in `b`, priorities 0-70 and 1-4 s of work. The bench process stands in for the
beat: a pass every CONTROLPLANE_RECONCILE_SECONDS (what those passes place is counted: the
event-driven passes should have left them nothing).

Checked from the programs' own records, and printed:
- devices double-booked: two records on one host naming one device, overlapping in time (must be 0);
- quota breaches: instants where an owner's running programs hold more GPUs than the quota (0);
- every run finished (succeeded);
- device utilisation while work was queued: per pool, busy GPU-time over the pool's GPUs x the
  time it had runs waiting (launched, program not started yet); the fleet figure sums both pools
  (target > 90 %). Dispatch latency (admission → program start) is printed to explain it.

Usage: .venv/bin/python bench/bench_fleet.py [--runs 200] [--seed 3] [--seconds 1,4] [--limit-margin S]
Set BENCH_REDIS_URL to a Redis database of your own (the broker of this bench's workers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load_stack import product_env, stop_process  # noqa: E402
from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402

PROGRAMS = REPO / "bench" / "fleet_programs.toml"
# name, pool, GPUs
WORKERS = (("fa1", "a", 4), ("fa2", "a", 4), ("fb1", "b", 2))
QUOTAS = {"alice": 2, "bob": 3, "dave": 4, "carol": None}  # None: the operator default (8)
STEP = 0.01  # seconds: the grid the time-based figures are sampled on


def start_workers(home: Path, logs: Path) -> list[Any]:
    import subprocess

    env = product_env("bench-fleet-default")  # no run is sent there: the fleet uses worker queues
    env["CONTROLPLANE_PROGRAMS_FILE"] = str(PROGRAMS)
    env["LOG_LEVEL"] = "WARNING"
    processes = []
    for name, pool, gpus in WORKERS:
        (home / name).mkdir(parents=True)
        worker_env = {
            **env,
            "CONTROLPLANE_WORKER_POOL": pool,
            "CONTROLPLANE_WORKER_GPUS": ",".join(str(i) for i in range(gpus)),
            "HOME": str(home / name),
        }
        command = [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--pool", "threads"]
        command += ["--concurrency", str(gpus), "--without-gossip", "--without-mingle", "-n", f"{name}@bench"]
        with (logs / f"{name}.log").open("wb") as log_file:
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=REPO,
                    env=worker_env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return processes


def wait_registered(count: int, timeout: float) -> None:
    from django.utils import timezone

    from fleet.agent import lost_before
    from fleet.models import Worker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Worker.objects.filter(heartbeat_at__gte=lost_before(timezone.now())).count() >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{count} workers did not register within {timeout:.0f} s")


def make_owners() -> dict[str, Any]:
    from django.contrib.auth.models import User

    from accounts.models import UserRole
    from fleet.models import Quota

    owners = {}
    for name, quota in QUOTAS.items():
        user = User.objects.create_user(name)
        UserRole.objects.update_or_create(user=user, defaults={"role": "operator"})
        if quota is not None:
            Quota.objects.create(user=user, max_gpus=quota)
        owners[name] = user
    return owners


def launch_all(
    owners: dict[str, Any],
    count: int,
    out: Path,
    rng: random.Random,
    seconds: tuple[float, float],
    limit_margin: float | None = None,
) -> list[int]:
    """`limit_margin`: each run declares `max_duration_seconds` = its work + this (what lets the
    scheduler backfill); None: no run declares one."""
    from runs.services import check_launch, do_launch_run

    ids = []
    for n in range(count):
        pool = rng.choice("aaab")
        name = rng.choice(list(owners))
        # Within the owner's quota: a run asking for more than its owner may ever hold waits for
        # good ("quota: alice uses 0 of 2 GPUs"), which is not what this bench measures.
        sizes = [g for g in ((1, 1, 2, 2, 3, 4) if pool == "a" else (1, 1, 2)) if g <= (QUOTAS[name] or 8)]
        gpus = rng.choice(sizes)
        owner = owners[name]
        work = round(rng.uniform(*seconds), 2)
        limits = {"max_duration_seconds": int(work + limit_margin) + 1} if limit_margin is not None else None
        launch = check_launch(
            name=f"fleet-{n}",
            program="fleetprobe",
            params={"seconds": work, "out": str(out)},
            limits=limits,
            owner=owner,
            fleet={"resources": {"pool": pool, "gpus": gpus}, "priority": rng.randint(0, 70)},
        )
        ids.append(do_launch_run(owner, launch).pk)
    return ids


def wait_all_ended(run_ids: list[int], timeout: float) -> int:
    """Until every run ended; a pass per beat period, as the beat would. Returns what those
    passes placed (work the event-driven passes left behind)."""
    from django.conf import settings

    from fleet.scheduler import schedule_pass
    from runs import lifecycle
    from runs.models import Run

    period = float(settings.CONTROLPLANE["RECONCILE_SECONDS"])
    deadline = time.monotonic() + timeout
    next_beat, placed_by_beat = time.monotonic() + period, 0
    while time.monotonic() < deadline:
        left = Run.objects.filter(pk__in=run_ids).exclude(status__in=lifecycle.TERMINAL_STATUSES).count()
        if left == 0:
            return placed_by_beat
        if time.monotonic() >= next_beat:
            placed_by_beat += len(schedule_pass().placed)
            next_beat = time.monotonic() + period
        time.sleep(0.2)
    raise RuntimeError(f"runs still not ended after {timeout:.0f} s")


def overlaps(intervals: list[tuple[float, float]]) -> int:
    ordered = sorted(intervals)
    return sum(1 for (_, end), (start, _) in itertools.pairwise(ordered) if start < end)


def share(busy: list[int], waiting: list[int], size: int) -> tuple[float, float, float]:
    """(busy GPU-steps, capacity GPU-steps, seconds) over the steps where `waiting` > 0."""
    steps = [i for i, count in enumerate(waiting) if count > 0]
    return float(sum(busy[i] for i in steps)), float(size * len(steps)), len(steps) * STEP


def fleet_share(pools: dict[str, tuple[float, float, float]]) -> float:
    capacity = sum(c for _, c, _ in pools.values())
    return sum(u for u, _, _ in pools.values()) / capacity if capacity else 1.0


def analyse(records: list[dict[str, Any]], runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    by_device: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for record in records:
        for device in record["devices"]:
            by_device.setdefault((record["host"], device), []).append((record["start"], record["end"]))
    double_booked = sum(overlaps(intervals) for intervals in by_device.values())
    wrong_count = sum(1 for r in records if len(r["devices"]) != runs[r["run_id"]]["gpus"])
    start = min(run["created"] for run in runs.values())
    end = max(record["end"] for record in records)
    steps = int((end - start) / STEP) + 1
    # Per step: GPUs each owner's programs hold; busy GPUs and waiting runs per pool.
    owner_gpus: dict[str, list[int]] = {name: [0] * steps for name in QUOTAS}
    busy = {pool: [0] * steps for _, pool, _ in WORKERS}
    waiting = {pool: [0] * steps for _, pool, _ in WORKERS}
    admissible = {pool: [0] * steps for _, pool, _ in WORKERS}
    started_at = {r["run_id"]: r["start"] for r in records if r["attempt"] == 1}
    for record in records:
        run = runs[record["run_id"]]
        first, last = int((record["start"] - start) / STEP), int((record["end"] - start) / STEP)
        for i in range(first, last):
            owner_gpus[run["owner"]][i] += run["gpus"]
            busy[run["pool"]][i] += run["gpus"]
    for run_id, run in runs.items():
        first = int((run["created"] - start) / STEP)
        last = int((started_at.get(run_id, end) - start) / STEP)
        limit = QUOTAS[run["owner"]] or 8
        for i in range(first, last):
            waiting[run["pool"]][i] += 1
            # Admissible: its owner's running programs leave room for it under the quota.
            if owner_gpus[run["owner"]][i] + run["gpus"] <= limit:
                admissible[run["pool"]][i] += 1
    breaches = {
        name: sum(1 for used in series if used > (QUOTAS[name] or 8)) * STEP
        for name, series in owner_gpus.items()
    }
    pool_size = {pool: sum(g for _, p, g in WORKERS if p == pool) for pool in busy}
    utilisation = {pool: share(busy[pool], waiting[pool], pool_size[pool]) for pool in busy}
    admissible_share = {pool: share(busy[pool], admissible[pool], pool_size[pool]) for pool in busy}
    gaps = []
    for (host, _), intervals in by_device.items():
        pool = next(p for n, p, _ in WORKERS if n == host)
        for (_, end_a), (start_b, _) in itertools.pairwise(sorted(intervals)):
            if waiting[pool][min(steps - 1, int((end_a - start) / STEP))] > 0:
                gaps.append(start_b - end_a)
    gaps.sort()
    gap_text = (
        f"{len(gaps)} gaps, p50 {statistics.median(gaps) * 1000:.0f} ms, "
        f"p95 {gaps[max(0, round(0.95 * len(gaps)) - 1)] * 1000:.0f} ms"
        if gaps
        else "none"
    )
    return {
        "gaps": gap_text,
        "double_booked": double_booked,
        "wrong_device_count": wrong_count,
        "quota_breach_seconds": breaches,
        "utilisation": utilisation,
        "fleet_utilisation": fleet_share(utilisation),
        "admissible_utilisation": admissible_share,
        "fleet_admissible_utilisation": fleet_share(admissible_share),
        "span_s": end - start,
    }


def bench(args: argparse.Namespace, db_name: str, data_dir: Path) -> int:
    os.environ["CONTROLPLANE_PROGRAMS_FILE"] = str(PROGRAMS)
    setup_django(db_name, data_dir, redis=True)
    from runs.models import Run

    out, logs = data_dir / "records", data_dir / "logs"
    out.mkdir()
    logs.mkdir()
    owners = make_owners()
    workers = start_workers(data_dir / "hosts", logs)
    try:
        wait_registered(len(WORKERS), timeout=120)
        began = time.monotonic()
        run_ids = launch_all(
            owners, args.runs, out, random.Random(args.seed), args.seconds, args.limit_margin
        )
        launched = time.monotonic() - began
        placed_by_beat = wait_all_ended(run_ids, timeout=args.timeout)
        wall = time.monotonic() - began
    finally:
        for process in workers:
            stop_process(process, 15, 30)
    records = [json.loads(path.read_text()) for path in out.glob("*.json")]
    rows = Run.objects.filter(pk__in=run_ids).select_related("owner")
    runs = {
        run.pk: {
            "owner": run.owner.username,
            "pool": run.resources["pool"],
            "gpus": run.resources["gpus"],
            "created": run.created_at.timestamp(),
            "status": run.status,
        }
        for run in rows
    }
    figures = analyse(records, runs)
    succeeded = sum(1 for run in runs.values() if run["status"] == "succeeded")
    latencies = dispatch_latencies(records)
    print(f"fleet: {', '.join(f'{n} (pool {p}, {g} GPUs)' for n, p, g in WORKERS)}; quotas {QUOTAS}")
    print(f"runs: {args.seconds[0]:g}-{args.seconds[1]:g} s of work each")
    print(f"runs: {args.runs} launched in {launched:.1f} s; all ended after {wall:.1f} s")
    print(f"finished: {succeeded} of {args.runs} succeeded; {len(records)} program records")
    print(
        f"devices double-booked: {figures['double_booked']} (records with the wrong device count: "
        f"{figures['wrong_device_count']})"
    )
    print(f"quota breaches (seconds over quota, per owner): {figures['quota_breach_seconds']}")
    for pool, (used, capacity, seconds) in figures["utilisation"].items():
        print(
            f"utilisation of pool {pool} while runs waited there: {used / capacity:.1%} over {seconds:.1f} s"
        )
    print(f"fleet utilisation while work was queued: {figures['fleet_utilisation']:.1%} (target > 90 %)")
    print(
        "  the same, counting only runs their owner's quota admitted at the time: "
        f"{figures['fleet_admissible_utilisation']:.1%} ("
        + ", ".join(f"{p} {u / c:.1%}" for p, (u, c, _) in figures["admissible_utilisation"].items() if c)
        + ")"
    )
    for step, (p50, p95) in latencies.items():
        print(f"{step}: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    print(f"idle device time between two programs while runs waited: {figures['gaps']}")
    print(f"runs placed by the beat's stand-in pass (missed by event passes): {placed_by_beat}")
    ok = (
        figures["double_booked"] == 0
        and figures["wrong_device_count"] == 0
        and not any(figures["quota_breach_seconds"].values())
        and succeeded == args.runs
    )
    print("PASS" if ok and figures["fleet_utilisation"] > 0.9 else "FAIL")
    return 0 if ok else 1


def dispatch_latencies(records: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Where a device's time between two programs goes, p50 and p95 of each step:
    - program end -> its attempt finished (the supervisor sees the exit and ends the run; the
      pass on that commit frees and places),
    - send to the worker's queue (the run's `enqueued_at`, on the admitting pass's commit) ->
      its program's first instant (the worker takes the message, claims, starts the program)."""
    from runs.models import RunAttempt

    by_attempt = {(r["run_id"], r["attempt"]): r for r in records}
    ended, started = [], []
    rows = RunAttempt.objects.values_list("run_id", "number", "finished_at", "run__enqueued_at")
    for run_id, number, finished, enqueued in rows:
        record = by_attempt.get((run_id, number))
        if record is None:
            continue
        if finished is not None:
            ended.append(finished.timestamp() - record["end"])
        if enqueued is not None:
            started.append(record["start"] - enqueued.timestamp())

    def p50_p95(values: list[float]) -> tuple[float, float]:
        if not values:
            return (float("nan"), float("nan"))
        ordered = sorted(values)
        return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]

    return {"program end -> run ended": p50_p95(ended), "sent -> program start": p50_p95(started)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--seconds", default="1,4", help="each run's work: uniform in MIN,MAX seconds")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for every run to end")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs, records)")
    parser.add_argument(
        "--limit-margin",
        type=float,
        help="runs declare max_duration_seconds = work + this (backfill needs declared limits)",
    )
    args = parser.parse_args()
    low, high = (float(part) for part in args.seconds.split(","))
    args.seconds = (low, high)
    db_name = f"bench_controlplane_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
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
        if args.keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
