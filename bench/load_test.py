"""Load test of the production topology: concurrent launches, API readers and websocket viewers.

Starts the real processes (uvicorn serving controlplane.asgi, a Celery worker with the threads
pool, Postgres, Redis) on a throwaway database, then:

1. setup: a superuser and a token (ORM); a few seed runs launched one after the other (proof
   that the worker consumes; their launch latency is reported as the no-load launch figure);
   the seeds' logs and metrics are what readers read in both phases;
2. no-load phase (`--baseline` s): readers (closed loop over runs list, run detail, logs after N,
   metrics of the seeds), a `/healthz` probe every 50 ms and a raw Postgres `SELECT 1` probe;
3. load phase (`--duration` s): the same readers and probes, plus launchers (each launches a run
   of `bench/load_program.py`, polls it to its end, launches again) and websocket viewers (each
   watches a live run from seq 0 to its end, counting frames, lines, gaps, duplicates and the
   delay from a line's timestamp to its receipt);
4. drain: launchers wait for their last run; viewers finish what they watch; then every viewing
   is compared with the lines in the database.

Writes one JSON file of results (per operation and phase: count, errors, p50/p95/p99, throughput;
websocket; runs launched, finished, failed; CPU used per process and the machine's busy share)
and prints a summary. `bench/check_load_results.py` judges the file against thresholds written as
ratios of the two phases. Exits 0 once results are written, 1 when setup failed, 130 on Ctrl-C.
The processes, the database `bench_load_<pid>`, the temp data directory and the Redis queue are
removed in every case.

Usage: .venv/bin/python bench/load_test.py [--small] [--duration S] [--launchers N] [--readers N]
       [--viewers N] [--baseline S] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench import load_stack  # noqa: E402
from bench.load_clients import (  # noqa: E402
    TERMINAL,
    PostgresProbe,
    SeedRun,
    Shared,
    healthz_probe,
    launch,
    launcher,
    reader,
    viewer,
    wait_finished,
)
from bench.load_stats import Recorder, percentile  # noqa: E402
from bench.throwaway import PG, create_database, drop_database, setup_django  # noqa: E402

SCHEMA = "controlplane-load/1"
MODES: dict[str, dict[str, Any]] = {
    # ~40 s on two cores, startup and cleanup included: the CI run.
    "small": {"duration": 15.0, "baseline": 6.0, "launchers": 2, "readers": 3, "viewers": 4, "seeds": 4},
    # A few minutes: the figures in docs/benchmarks.md.
    "large": {"duration": 120.0, "baseline": 30.0, "launchers": 4, "readers": 6, "viewers": 16, "seeds": 6},
}
SEED_LINES = 500
WARMUP_SECONDS = 1.0


class SetupError(Exception):
    """The stack could not be brought to the point of measuring."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="the CI size (~40 s in all)")
    parser.add_argument("--duration", type=float, help="seconds of the load phase")
    parser.add_argument("--baseline", type=float, help="seconds of the no-load phase")
    parser.add_argument("--launchers", type=int, help="concurrent launchers (= worker slots)")
    parser.add_argument("--readers", type=int, help="concurrent API readers")
    parser.add_argument("--viewers", type=int, help="concurrent websocket viewers")
    parser.add_argument("--run-lines", type=int, default=200, help="log lines each launched run prints")
    parser.add_argument("--run-seconds", type=float, default=2.0, help="seconds each launched run lasts")
    parser.add_argument("--out", type=Path, help="results file (default test-output/load-<mode>.json)")
    args = parser.parse_args(argv)
    args.mode = "small" if args.small else "large"
    for name, default in MODES[args.mode].items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    if args.duration <= 0 or args.baseline <= 0:
        parser.error("--duration and --baseline must be positive")
    if args.launchers < 1 or args.readers < 1 or args.viewers < 0:
        parser.error("--launchers and --readers must be at least 1, --viewers at least 0")
    if not 1 <= args.run_lines <= 100_000 or not 0 <= args.run_seconds <= 600:
        parser.error("--run-lines must be 1..100000 and --run-seconds 0..600")
    if args.out is None:
        args.out = REPO / "test-output" / f"load-{args.mode}.json"
    return args


# -- setup ------------------------------------------------------------------------------------


def prepare_database() -> str:
    """Offset run ids, then a superuser's token.

    Redis pub/sub channels are global to the server, not per database number, and websocket
    groups are named `run.<id>`: ids far from the small ones of test stacks on the same Redis keep
    their frames out of our viewers (and ours out of theirs).
    """
    from django.contrib.auth import get_user_model
    from django.db import connection

    from accounts.tokens import do_issue_token

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('runs_run', 'id'), %s, false)",
            [secrets.randbelow(10**9) + 10**9],
        )
    # A superuser, so the load test keeps launching whatever roles and permissions come to be.
    user = get_user_model().objects.create_superuser(
        "load", "load@example.invalid", secrets.token_urlsafe(24)
    )
    return do_issue_token(user, name="load test").plaintext


async def seed(client: httpx.AsyncClient, shared: Shared, count: int) -> None:
    """Seed runs, launched one at a time with nothing else running."""
    ids = []
    recorder = shared.recorder
    for number in range(count):
        # The first launch is cold (imports, the programs file, first plans): not a baseline.
        shared.recorder = Recorder() if number == 0 else recorder
        run_id = await launch(client, shared, f"seed-{number}", {"lines": SEED_LINES, "seconds": 0.5})
        if run_id is None:
            samples = shared.recorder.op("launch").error_samples
            raise SetupError(f"seed launch failed: {samples[-1] if samples else 'no answer'}")
        ids.append(run_id)
    shared.recorder = recorder
    for run_id in ids:
        status = await wait_finished(client, shared, run_id)
        if status != "succeeded":
            detail = (await client.get(f"/api/v1/runs/{run_id}/")).text[:300]
            raise SetupError(f"seed run {run_id} ended {status or 'not at all'}: {detail}")
    shared.seeds = [SeedRun(run_id=run_id, lines=SEED_LINES) for run_id in ids]


# -- phases -----------------------------------------------------------------------------------


class Meter:
    """CPU used by the web server, the worker and this process, and the machine, over a window."""

    def __init__(self, stack: load_stack.Stack) -> None:
        self.stack = stack
        self.started = time.perf_counter()
        self.web = load_stack.cpu_seconds(stack.web.pid) or 0.0
        self.worker = load_stack.cpu_seconds(stack.worker.pid) or 0.0
        times = os.times()
        self.client = times.user + times.system
        self.busy, self.total = load_stack.machine_busy_jiffies()

    def read(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        times = os.times()
        busy, total = load_stack.machine_busy_jiffies()
        web = load_stack.cpu_seconds(self.stack.web.pid)
        worker = load_stack.cpu_seconds(self.stack.worker.pid)
        return {
            "web_cpu_s": None if web is None else round(web - self.web, 2),
            "worker_cpu_s": None if worker is None else round(worker - self.worker, 2),
            "client_cpu_s": round(times.user + times.system - self.client, 2),
            "machine_busy_fraction": round((busy - self.busy) / max(1, total - self.total), 3),
            "wall_s": round(wall, 2),
        }


async def measure(
    args: argparse.Namespace, stack: load_stack.Stack, token: str, conninfo: str
) -> dict[str, Any]:
    shared = Shared(
        recorder=Recorder(),
        run_params={"lines": args.run_lines, "seconds": args.run_seconds},
        # Slots = launchers, so a run never waits for a slot: this only bounds a hung run.
        run_timeout=max(60.0, 10 * args.run_seconds + 30),
    )
    limits = httpx.Limits(max_connections=args.readers + args.launchers + 4)
    async with httpx.AsyncClient(
        base_url=stack.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30.0),
        limits=limits,
    ) as client:
        spawned: list[asyncio.Task[None]] = []
        try:
            return await _phases(args, stack, token, conninfo, shared, client, spawned)
        finally:
            # On Ctrl-C or a failure, no actor may outlive the client it uses.
            for task in spawned:
                task.cancel()
            await asyncio.gather(*spawned, return_exceptions=True)


async def _phases(
    args: argparse.Namespace,
    stack: load_stack.Stack,
    token: str,
    conninfo: str,
    shared: Shared,
    client: httpx.AsyncClient,
    spawned: list[asyncio.Task[None]],
) -> dict[str, Any]:
    def spawn(actor: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(actor)
        spawned.append(task)
        return task

    started = time.perf_counter()
    await seed(client, shared, args.seeds)
    seed_seconds = time.perf_counter() - started
    seed_launches = shared.recorder.op("launch")

    async def window(seconds: float) -> float:
        """Readers and the healthz probe for `seconds`; the window's exact length."""
        shared.stop.clear()
        tasks = [spawn(reader(client, shared, n)) for n in range(args.readers)]
        tasks.append(spawn(healthz_probe(client, shared)))
        opened = time.perf_counter()
        await asyncio.sleep(seconds)
        shared.stop.set()
        elapsed = time.perf_counter() - opened
        await asyncio.gather(*tasks)
        return elapsed

    # Warm-up, not recorded: first queries plan and fill caches, connections open.
    shared.recorder = Recorder()
    await window(WARMUP_SECONDS)

    probe = PostgresProbe(conninfo, shared)
    noload = shared.recorder = Recorder()
    noload.ops["launch"] = seed_launches
    probe.start()
    try:
        meter = Meter(stack)
        noload_window = await window(args.baseline)
        noload_cpu = meter.read()

        load = shared.recorder = Recorder()
        meter = Meter(stack)
        shared.stop.clear()
        launchers = [spawn(launcher(client, shared, n)) for n in range(args.launchers)]
        viewers = [spawn(viewer(client, stack.ws_base, token, shared, n)) for n in range(args.viewers)]
        load_window = await window(args.duration)
        load_cpu = meter.read()
    finally:
        probe.halt.set()
    drain_started = time.perf_counter()
    await asyncio.gather(*launchers)
    shared.launchers_done.set()
    await asyncio.gather(*viewers)
    drain_seconds = time.perf_counter() - drain_started
    probe.join(timeout=5)

    return {
        "seed_seconds": round(seed_seconds, 2),
        "phases": {
            "noload": {
                "window_s": round(noload_window, 2),
                "ops": noload.summary(noload_window),
                "cpu": noload_cpu,
            },
            "load": {
                "window_s": round(load_window, 2),
                "drain_s": round(drain_seconds, 2),
                "ops": load.summary(load_window),
                "cpu": load_cpu,
            },
        },
        "shared": shared,
    }


# -- the verdict of the database ----------------------------------------------------------------


def runs_summary(shared: Shared) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """What became of every launched run, from the database; and each run's row."""
    from runs.models import Run

    rows = list(
        Run.objects.filter(pk__in=shared.runs.launched).values(
            "id", "status", "error_kind", "error_code", "log_seq", "created_at", "started_at", "finished_at"
        )
    )
    by_status: dict[str, int] = {}
    failures: dict[str, int] = {}
    waits: list[float] = []
    lengths: list[float] = []
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        if row["status"] != "succeeded" and row["error_kind"]:
            key = f"{row['error_kind']}/{row['error_code']}"
            failures[key] = failures.get(key, 0) + 1
        if row["started_at"]:
            waits.append((row["started_at"] - row["created_at"]).total_seconds())
        if row["started_at"] and row["finished_at"]:
            lengths.append((row["finished_at"] - row["started_at"]).total_seconds())
    finished = sum(count for status, count in by_status.items() if status in TERMINAL)

    def ms(values: list[float], fraction: float) -> float | None:
        value = percentile(values, fraction)
        return None if value is None else round(value * 1000, 1)

    summary = {
        "launched": len(shared.runs.launched),
        "finished": finished,
        "succeeded": by_status.get("succeeded", 0),
        "failed": finished - by_status.get("succeeded", 0),
        "unfinished": len(shared.runs.launched) - finished,
        "by_status": by_status,
        "failure_kinds": failures,
        "launch_to_start_ms": {"p50": ms(waits, 0.5), "p95": ms(waits, 0.95), "max": ms(waits, 1.0)},
        "start_to_finish_ms": {"p50": ms(lengths, 0.5), "p95": ms(lengths, 0.95), "max": ms(lengths, 1.0)},
    }
    return summary, {row["id"]: dict(row) for row in rows}


def socket_summary(shared: Shared, rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Websocket figures, with every viewing checked against the run's row in the database."""
    missing = 0
    missed_terminal = 0
    incomplete: list[dict[str, Any]] = []
    for viewing in shared.sockets.viewings:
        row = rows.get(viewing.run_id, {})
        if viewing.saw_terminal:
            missing += max(0, row.get("log_seq", 0) - viewing.last_seq)
            continue
        finished_at = row.get("finished_at")
        missed_terminal += row.get("status") in TERMINAL
        incomplete.append(
            {
                "run_id": viewing.run_id,
                "last_seq": viewing.last_seq,
                "lines_in_database": row.get("log_seq"),
                "status_in_database": row.get("status"),
                "first_status_frame": viewing.first_status,
                # Negative: the run finished after the socket opened, yet no terminal frame came.
                "run_finished_before_open_s": None
                if finished_at is None
                else round(viewing.opened - finished_at.timestamp(), 3),
            }
        )
    return shared.sockets.summary(
        missing_lines=missing, incomplete=incomplete, missed_terminal=missed_terminal
    )


# -- main -------------------------------------------------------------------------------------


def print_summary(results: dict[str, Any], out: Path) -> None:
    def row(phase: str, name: str) -> str:
        op = results["phases"][phase]["ops"].get(name)
        if not op:
            return "-"
        return (
            f"{op['count']:>6} req, {op['errors']} err, p50 {op['p50_ms']} ms, p95 {op['p95_ms']} ms, "
            f"{op['throughput_per_s']}/s"
        )

    names = sorted(set(results["phases"]["noload"]["ops"]) | set(results["phases"]["load"]["ops"]))
    for name in names:
        print(f"{name:<11} no-load: {row('noload', name)}")
        print(f"{'':<11} load:    {row('load', name)}")
    ws = results["websocket"]
    print(
        f"websocket   {ws['connections']} connections, {ws['frames']} frames, {ws['lines']} lines, "
        f"{ws['gaps']} gaps, {ws['duplicates']} duplicates, {ws['missing_lines']} missing; delivery p50 "
        f"{ws['delivery_latency_ms']['p50']} ms, p95 {ws['delivery_latency_ms']['p95']} ms"
    )
    runs = results["runs"]
    print(
        f"runs        {runs['launched']} launched, {runs['finished']} finished, {runs['failed']} failed, "
        f"{runs['unfinished']} unfinished"
    )
    for phase in ("noload", "load"):
        print(f"cpu {phase:<7} {results['phases'][phase]['cpu']}")
    print(f"results in {out}")


def run(
    args: argparse.Namespace, db_name: str, data_dir: Path, queue: str, stacks: list[load_stack.Stack]
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    setup_django(db_name, data_dir, redis=True)
    token = prepare_database()
    timings["migrate_s"] = round(time.perf_counter() - started, 2)
    logs = data_dir / "logs"
    logs.mkdir()
    stack = load_stack.start(queue, slots=args.launchers, logs=logs)
    stacks.append(stack)  # main's cleanup stops it, whatever happens from here on
    try:
        timings["web_ready_s"] = round(load_stack.wait_web_ready(stack, 90), 2)
        conninfo = f"host={PG['host']} port={PG['port']} user={PG['user']} dbname={db_name}"
        loadavg_start = os.getloadavg()
        measured = asyncio.run(measure(args, stack, token, conninfo))
        alive = {"web": stack.web.poll() is None, "worker": stack.worker.poll() is None}
    except Exception:
        tails = f"web log tail:\n{stack.tail('web')}\nworker log tail:\n{stack.tail('worker')}"
        print(tails, file=sys.stderr)
        raise
    load_stack.stop(stack)
    shared: Shared = measured.pop("shared")
    runs, rows = runs_summary(shared)
    timings["seed_s"] = measured.pop("seed_seconds")
    return {
        "schema": SCHEMA,
        "mode": args.mode,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "duration_s": args.duration,
            "baseline_s": args.baseline,
            "launchers": args.launchers,
            "readers": args.readers,
            "viewers": args.viewers,
            "seeds": args.seeds,
            "run_lines": args.run_lines,
            "run_seconds": args.run_seconds,
            "flush_interval_s": float(os.environ.get("CONTROLPLANE_FLUSH_INTERVAL_SECONDS", "0.25")),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(v, 2) for v in loadavg_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        },
        "setup": timings,
        **measured,
        "websocket": socket_summary(shared, rows),
        "runs": runs,
        "processes_alive": alive,
    }


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cleanup(db_name: str, created: bool, data_dir: Path, queue: str, stacks: list[load_stack.Stack]) -> None:
    for stack in stacks:
        load_stack.stop(stack)
    with contextlib.suppress(Exception):
        from django.db import connections

        connections.close_all()
    if created:
        try:
            drop_database(db_name)
        except Exception as error:
            print(f"could not drop {db_name}: {error}", file=sys.stderr)
    if "REDIS_URL" in os.environ:
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
            # The queue's name is unique to this invocation: its keys are ours alone.
            for key in client.scan_iter(match=f"*{queue}*"):
                client.delete(key)
            client.close()
    shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    db_name = f"bench_load_{os.getpid()}"
    queue = f"bench-load-{os.getpid()}-{secrets.token_hex(3)}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    # A CI job's cancel (SIGTERM) cleans up like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    created = False
    stacks: list[load_stack.Stack] = []
    try:
        create_database(db_name)
        created = True
        results = run(args, db_name, data_dir, queue, stacks)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print_summary(results, args.out)
        return 0
    except KeyboardInterrupt:
        print("load test interrupted; cleaning up", file=sys.stderr)
        return 130
    except (SetupError, RuntimeError, OSError, psycopg.Error) as error:
        print(f"load test failed: {error}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not leave the database or processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup(db_name, created, data_dir, queue, stacks)


if __name__ == "__main__":
    sys.exit(main())
