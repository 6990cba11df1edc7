"""Supervisor batch writer throughput against a raw COPY, same table, same batching.

(a) ``runs.batches.write_batch(run_id, 1, Batch(lines=[...]), {})`` -- what the supervisor calls
    on every flush: the fenced ``UPDATE ... RETURNING`` that reserves seqs, the COPY of the lines,
    the commit, and the on-commit publish of the frame to the channel layer (Redis pub/sub unless
    ``--no-redis``). The publishes are fire-and-forget on a background thread in the same
    process, so the timed section waits for them to drain: their CPU is the supervisor's too.
(b) a raw psycopg ``COPY runs_logline (run_id, seq, ts, stream, line) FROM STDIN`` of the same rows
    for another run, in batches of the same size, one transaction per batch.

The two alternate (A B, B A, A B ...) for ``--repeats`` rounds; medians are compared.
Target: writer / COPY >= 0.5. Metric points (write_batch's upsert against a raw COPY into
runs_metricpoint) and bytes stored per row are printed for information.

Each invocation creates a throwaway database ``bench_controlplane_<pid>`` and drops it at the end.

Usage: .venv/bin/python bench/bench_writer.py [--lines 200000] [--batch 2000] [--repeats 3]
                                              [--no-redis] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throwaway import PG, create_database, drop_database, setup_django  # noqa: E402

TARGET = 0.5
KEYS = ("train/loss", "lr", "tokens_per_s", "step_time_ms")


# -- throwaway database -----------------------------------------------------------------------


# -- data -------------------------------------------------------------------------------------


def make_lines(n: int, start: datetime) -> list[tuple[datetime, str, str]]:
    """~80-byte training-log lines with increasing timestamps (built outside the timed sections)."""
    rng = random.Random(1234)
    rows = []
    for i in range(n):
        text = (
            f"step {i:>8} | loss {rng.uniform(0.5, 4.0):.6f} | lr {rng.uniform(1e-5, 3e-4):.3e} "
            f"| tok/s {rng.uniform(9e3, 2e4):8.1f} | gpu {rng.randint(10, 99)}% "
            f"| mem {rng.uniform(1, 80):4.1f}G"
        )
        rows.append((start + timedelta(microseconds=i * 50), "stdout" if i % 50 else "stderr", text[:80]))
    return rows


def make_points(steps: int, first_step: int, start: datetime) -> list[tuple[str, int, float, datetime]]:
    rng = random.Random(first_step)
    rows = []
    for step in range(first_step, first_step + steps):
        ts = start + timedelta(milliseconds=step)
        for key in KEYS:
            rows.append((key, step, rng.random(), ts))
    return rows


def chunks(rows: list[Any], size: int) -> list[list[Any]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# -- publish accounting -----------------------------------------------------------------------


class PublishTracker:
    """Keeps the futures of frames published on commit so a timed section can wait for them."""

    def __init__(self) -> None:
        from runs.events import publisher

        self.pending: list[Any] = []
        original = publisher.publish

        def tracked(run_id: int, *frames: Any) -> Any:
            future = original(run_id, *frames)
            if future is not None:
                self.pending.append(future)
            return future

        publisher.publish = tracked  # type: ignore[method-assign]

    def drain(self) -> int:
        count = len(self.pending)
        for future in self.pending:
            future.result(timeout=120)
        self.pending.clear()
        return count


# -- the measured operations ------------------------------------------------------------------


def run_writer_lines(
    run_id: int, batches: list[list[Any]], tracker: PublishTracker
) -> tuple[float, float, int]:
    """Returns (seconds until the last commit, seconds including the publishes' drain, frames sent)."""
    from runs.batches import Batch, write_batch

    started = time.perf_counter()
    for lines in batches:
        write_batch(run_id, 1, Batch(lines=list(lines)), {})
    committed = time.perf_counter() - started
    frames = tracker.drain()
    return committed, time.perf_counter() - started, frames


def run_copy_lines(
    conn: psycopg.Connection[Any], run_id: int, first_seq: int, batches: list[list[Any]]
) -> float:
    seq = first_seq
    started = time.perf_counter()
    for lines in batches:
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy("COPY runs_logline (run_id, seq, ts, stream, line) FROM STDIN") as copy,
        ):
            for ts, stream, line in lines:
                seq += 1
                copy.write_row((run_id, seq, ts, stream, line))
    return time.perf_counter() - started


def run_writer_points(
    run_id: int, batches: list[list[Any]], cache: dict[str, int], tracker: PublishTracker
) -> float:
    from runs.batches import Batch, write_batch

    started = time.perf_counter()
    for points in batches:
        write_batch(run_id, 1, Batch(points=list(points)), cache)
    tracker.drain()
    return time.perf_counter() - started


def run_copy_points(conn: psycopg.Connection[Any], series: dict[str, int], batches: list[list[Any]]) -> float:
    started = time.perf_counter()
    for points in batches:
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy("COPY runs_metricpoint (series_id, step, value, ts) FROM STDIN") as copy,
        ):
            for key, step, value, ts in points:
                copy.write_row((series[key], step, value, ts))
    return time.perf_counter() - started


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    """Flush dirty buffers between phases so one phase's checkpoint does not land in the next."""
    conn.execute("CHECKPOINT")


def storage_figures(conn: psycopg.Connection[Any], table: str) -> tuple[int, int, int, int]:
    conn.execute(f"VACUUM ANALYZE {table}")
    row = conn.execute(
        f"SELECT count(*), pg_total_relation_size('{table}'), pg_relation_size('{table}'), "
        f"pg_indexes_size('{table}') FROM {table}"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def profile_writer(run_id: int, batches: list[list[Any]], tracker: PublishTracker) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run_writer_lines(run_id, batches, tracker)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative")
    stats.print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    print(out.getvalue())


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=200_000, help="log lines (and metric points) per pass")
    parser.add_argument("--batch", type=int, default=2_000, help="rows per write_batch / COPY transaction")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true", help="in-process channel layer instead of Redis")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra write_batch pass")
    args = parser.parse_args()

    db_name = f"bench_controlplane_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-writer-"))
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


def bench(args: argparse.Namespace, db_name: str, data_dir: Path) -> int:
    t0 = time.perf_counter()
    setup_django(db_name, data_dir, redis=not args.no_redis)
    print(
        f"database {db_name} migrated in {time.perf_counter() - t0:.1f} s; channel layer: "
        f"{'Redis pub/sub' if not args.no_redis else 'in-memory'}"
    )

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from runs.models import MetricSeries, Run, RunStatus

    user = get_user_model().objects.create_user("bench", password=secrets.token_urlsafe(16))
    common = {
        "owner": user,
        "program": "bench",
        "queue": "training",
        "status": RunStatus.RUNNING,
        "attempt": 1,
    }
    writer_run = Run.objects.create(name="writer", **common)
    copy_run = Run.objects.create(name="copy", **common)
    writer_points_run = Run.objects.create(name="writer-points", **common)
    copy_points_run = Run.objects.create(name="copy-points", **common)
    copy_series = {key: MetricSeries.objects.create(run=copy_points_run, key=key).pk for key in KEYS}
    tracker = PublishTracker()

    now = timezone.now()
    lines = make_lines(args.lines, now)
    line_batches = chunks(lines, args.batch)
    steps = args.lines // len(KEYS)
    n_points = steps * len(KEYS)
    print(
        f"{args.lines:,} log lines per pass (avg {statistics.fmean(len(x[2]) for x in lines):.0f} bytes), "
        f"batches of {args.batch:,} -> {len(line_batches)} batches; {n_points:,} metric points per pass "
        f"({len(KEYS)} keys x {steps:,} steps); {args.repeats} repeats, alternating order"
    )

    raw = psycopg.connect(dbname=db_name, autocommit=True, **PG)
    writer_rates: list[float] = []
    writer_commit_rates: list[float] = []
    copy_rates: list[float] = []
    point_writer_rates: list[float] = []
    point_copy_rates: list[float] = []
    point_cache: dict[str, int] = {}
    copy_seq = 0
    try:
        # Warm-up: one batch each way (connections, prepared paths, the publisher's Redis connection).
        run_writer_lines(writer_run.pk, line_batches[:1], tracker)
        run_copy_lines(raw, copy_run.pk, copy_seq, line_batches[:1])
        copy_seq += len(line_batches[0])

        for repeat in range(args.repeats):
            order = ("writer", "copy") if repeat % 2 == 0 else ("copy", "writer")
            for mode in order:
                checkpoint(raw)
                if mode == "writer":
                    committed, total, frames = run_writer_lines(writer_run.pk, line_batches, tracker)
                    writer_rates.append(args.lines / total)
                    writer_commit_rates.append(args.lines / committed)
                    print(
                        f"  repeat {repeat + 1} write_batch lines: {args.lines / total:>10,.0f} rows/s "
                        f"({total:.2f} s; last commit at {committed:.2f} s, publish drain "
                        f"{total - committed:.2f} s for {frames} frames)",
                        flush=True,
                    )
                else:
                    elapsed = run_copy_lines(raw, copy_run.pk, copy_seq, line_batches)
                    copy_seq += args.lines
                    copy_rates.append(args.lines / elapsed)
                    print(
                        f"  repeat {repeat + 1} raw COPY lines:    {args.lines / elapsed:>10,.0f} rows/s "
                        f"({elapsed:.2f} s)",
                        flush=True,
                    )

        for repeat in range(args.repeats):
            points = make_points(steps, repeat * steps, now)
            point_batches = chunks(points, args.batch)
            order = ("writer", "copy") if repeat % 2 == 0 else ("copy", "writer")
            for mode in order:
                checkpoint(raw)
                if mode == "writer":
                    elapsed = run_writer_points(writer_points_run.pk, point_batches, point_cache, tracker)
                    point_writer_rates.append(n_points / elapsed)
                    label = "write_batch points"
                else:
                    elapsed = run_copy_points(raw, copy_series, point_batches)
                    point_copy_rates.append(n_points / elapsed)
                    label = "raw COPY points   "
                print(
                    f"  repeat {repeat + 1} {label}: {n_points / elapsed:>10,.0f} rows/s ({elapsed:.2f} s)",
                    flush=True,
                )

        if args.profile:
            print("\ncProfile of one more write_batch pass (log lines):")
            profile_writer(writer_run.pk, line_batches, tracker)

        line_count, line_total, line_heap, line_index = storage_figures(raw, "runs_logline")
        point_count, point_total, point_heap, point_index = storage_figures(raw, "runs_metricpoint")
    finally:
        raw.close()

    writer = statistics.median(writer_rates)
    writer_commit = statistics.median(writer_commit_rates)
    copy = statistics.median(copy_rates)
    pw, pc = statistics.median(point_writer_rates), statistics.median(point_copy_rates)
    ratio = writer / copy
    print()
    print(
        f"log lines   write_batch  median {writer:>10,.0f} rows/s  (to last commit, before publish "
        f"drain: {writer_commit:,.0f} rows/s)"
    )
    print(f"log lines   raw COPY     median {copy:>10,.0f} rows/s")
    print(f"log lines   ratio writer/COPY = {ratio:.3f}  (target >= {TARGET})")
    print(f"metric pts  write_batch  median {pw:>10,.0f} rows/s")
    print(f"metric pts  raw COPY     median {pc:>10,.0f} rows/s")
    print(f"metric pts  ratio writer/COPY = {pw / pc:.3f}  (informational)")
    print(
        f"storage     log line:     {line_total / line_count:6.1f} bytes/row total "
        f"(heap {line_heap / line_count:.1f} + indexes {line_index / line_count:.1f}; {line_count:,} rows, "
        f"{line_total / 2**20:.1f} MiB)"
    )
    print(
        f"storage     metric point: {point_total / point_count:6.1f} bytes/row total "
        f"(heap {point_heap / point_count:.1f} + indexes {point_index / point_count:.1f}; "
        f"{point_count:,} rows, {point_total / 2**20:.1f} MiB; the peer spends 270-340)"
    )
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"{verdict}: write_batch/COPY log-line throughput ratio {ratio:.3f} (target >= {TARGET})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
