"""Judge a load test's results (bench/load_test.py) against thresholds; exit 1 on a regression.

Latency and throughput are compared as ratios of the load phase to the no-load phase of the same
run, on the same machine, minutes apart: a slow or busy machine slows both, so the verdict is
about what the load did, not about the hardware. What must hold at any speed (no errors, no gap
or duplicate in a stream, every run finished) is checked absolutely.

Prints one line per violated threshold and exits 1; prints one PASS line and exits 0 otherwise;
exits 2 with one line when the file cannot be read as results.

Usage: .venv/bin/python bench/check_load_results.py RESULTS.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

THRESHOLDS: dict[str, float] = {
    # A non-2xx answer, a transport error or a refused websocket is a bug at this load, not noise;
    # 0.1 % leaves room for one odd event in a large run, none in a small one.
    "max_error_rate": 0.001,
    # p95 of each read under load / p95 of the same read (same readers, same seed runs) with no
    # load. The load adds a worker, training processes and websocket pushes on the same cores, so
    # reads do slow down (2x here on two cores); beyond this, something else made them slow: a
    # query that grows with the runs table, a lock held by the writers, a blocked event loop.
    "max_read_p95_ratio": 4.0,
    # Reads per second under load / with no load, for each read: the readers are a closed loop,
    # so lost throughput is server capacity the load took away (0.7x here on two cores).
    "min_read_throughput_ratio": 0.35,
    # `/healthz` p95 under load / with no load: a trivial request queues behind everything else
    # the server does, so this is the event loop's and the sync thread's backlog.
    "max_healthz_p95_ratio": 5.0,
    # Median launch latency / median run-detail read latency, both under the same load: what a
    # launch costs in reads (a transaction, the audit record, the enqueue; ~3 reads here). The
    # no-load phase has no launches to compare with (the seed launches ran without readers), and
    # medians because a small run has only ~10 launches.
    "max_launch_to_read_p50_ratio": 8.0,
    # The ratios above are multiplied (throughput divided) by how much slower a raw Postgres
    # `SELECT 1` got between the phases (medians), so that other jobs starting on a shared machine
    # mid-run do not fail it; capped, so that slowness cannot excuse a real regression.
    "max_noise_credit": 2.0,
    # Websocket delivery p95 (line timestamp to receipt), in supervisor flush intervals: a line
    # waits up to one interval to be written and published; the rest is Redis, the consumer and
    # the viewer. ~1.1 intervals here.
    "max_delivery_p95_flush_intervals": 6.0,
    # Streams are exact: a gap or a duplicate by seq, or a line in the database that a viewer who
    # watched the run to its end never got, is a bug whatever the load.
    "max_gaps": 0,
    "max_duplicates": 0,
    "max_missing_lines": 0,
    # A viewer that never saw its run end (a stalled or dropped socket).
    "max_incomplete_viewings": 0,
    # Every launched run reached a terminal status, and succeeded: the program cannot fail, so a
    # failure is the platform's (lost lease, infrastructure error, timeout).
    "min_finished_fraction": 1.0,
    "max_failed_runs": 0,
    # A ratio of two p95s over fewer samples than this is noise, and a run that launched fewer
    # runs than launchers measured nothing; either fails rather than passing vacuously.
    "min_samples": 20,
    "min_runs_per_launcher": 1,
}

READS = ("runs_list", "run_detail", "logs_after", "metrics")


class ResultsError(Exception):
    """The file is not a load test's results."""


def load(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text())
    except OSError as error:
        raise ResultsError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path} is not JSON: {error}") from None
    if not isinstance(results, dict) or not str(results.get("schema", "")).startswith("controlplane-load/"):
        raise ResultsError(f"{path} is not a load test's results (no controlplane-load schema)")
    return results


def _op(results: dict[str, Any], phase: str, name: str) -> dict[str, Any]:
    op = results["phases"][phase]["ops"].get(name)
    if not isinstance(op, dict):
        raise ResultsError(f"no {name!r} operation in the {phase} phase")
    return op


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return float(numerator) / float(denominator)


def noise_credit(results: dict[str, Any], limits: dict[str, float]) -> float:
    load, base = _op(results, "load", "pg_select1"), _op(results, "noload", "pg_select1")
    ratio = _ratio(load["p50_ms"], base["p50_ms"])
    return min(max(1.0, ratio or 1.0), limits["max_noise_credit"])


def check_errors(results: dict[str, Any], limits: dict[str, float]) -> list[str]:
    problems = []
    for phase in ("noload", "load"):
        for name, op in sorted(results["phases"][phase]["ops"].items()):
            if op["count"] and op["errors"] / op["count"] > limits["max_error_rate"]:
                sample = f"; first: {op['error_samples'][0]}" if op.get("error_samples") else ""
                problems.append(
                    f"{name} ({phase}): {op['errors']} errors in {op['count']} "
                    f"({op['errors'] / op['count']:.2%} > {limits['max_error_rate']:.2%}){sample}"
                )
    ws = results["websocket"]
    attempts = ws["connections"] + ws["connect_errors"]
    if attempts and ws["connect_errors"] / attempts > limits["max_error_rate"]:
        problems.append(
            f"websocket: {ws['connect_errors']} of {attempts} connections failed "
            f"(> {limits['max_error_rate']:.2%})"
        )
    return problems


def check_latency(results: dict[str, Any], limits: dict[str, float], noise: float) -> list[str]:
    problems = []
    credit = f"noise credit {noise:.2f}"
    for name in (*READS, "healthz"):
        load, base = _op(results, "load", name), _op(results, "noload", name)
        for phase, op in (("load", load), ("no-load", base)):
            if op["count"] - op["errors"] < limits["min_samples"]:
                problems.append(
                    f"{name}: only {op['count'] - op['errors']} successful samples {phase} "
                    f"(< {limits['min_samples']:.0f}); the ratios would be noise"
                )
        limit = limits["max_healthz_p95_ratio" if name == "healthz" else "max_read_p95_ratio"]
        ratio = _ratio(load["p95_ms"], base["p95_ms"])
        if ratio is not None and ratio > limit * noise:
            problems.append(
                f"{name}: p95 under load {load['p95_ms']:.1f} ms is {ratio:.2f}x the no-load "
                f"{base['p95_ms']:.1f} ms (limit {limit:.2f}x, {credit})"
            )
        if name == "healthz":
            continue
        ratio = _ratio(load["throughput_per_s"], base["throughput_per_s"])
        floor = limits["min_read_throughput_ratio"] / noise
        if ratio is not None and ratio < floor:
            problems.append(
                f"{name}: {load['throughput_per_s']:.1f}/s under load is {ratio:.2f}x the no-load "
                f"{base['throughput_per_s']:.1f}/s (floor {floor:.2f}x, {credit})"
            )
    launch, read = _op(results, "load", "launch"), _op(results, "load", "run_detail")
    ratio = _ratio(launch["p50_ms"], read["p50_ms"])
    limit = limits["max_launch_to_read_p50_ratio"]
    if ratio is not None and ratio > limit:
        problems.append(
            f"launch: median {launch['p50_ms']:.1f} ms under load is {ratio:.2f}x the median run "
            f"detail read {read['p50_ms']:.1f} ms in the same phase (limit {limit:.2f}x)"
        )
    return problems


def check_streams(results: dict[str, Any], limits: dict[str, float]) -> list[str]:
    problems = []
    ws = results["websocket"]
    for key, limit in (
        ("gaps", "max_gaps"),
        ("duplicates", "max_duplicates"),
        ("missing_lines", "max_missing_lines"),
        ("incomplete_viewings", "max_incomplete_viewings"),
    ):
        if ws[key] > limits[limit]:
            sample = f"; first: {ws['error_samples'][0]}" if ws.get("error_samples") else ""
            if key == "incomplete_viewings" and ws.get("missed_terminal_status"):
                sample = (
                    f"; {ws['missed_terminal_status']} of them never got the terminal status of a run "
                    f"that did finish: {ws.get('incomplete_details', [])[:1]}"
                )
            problems.append(f"websocket: {ws[key]} {key.replace('_', ' ')} (> {limits[limit]:.0f}){sample}")
    viewers = results["config"]["viewers"]
    if viewers and ws["lines"] == 0:
        problems.append(f"websocket: {viewers} viewers received no line at all")
    flush = float(results["config"]["flush_interval_s"]) * 1000
    p95 = ws["delivery_latency_ms"]["p95"]
    if p95 is not None and p95 > limits["max_delivery_p95_flush_intervals"] * flush:
        problems.append(
            f"websocket: delivery p95 {p95:.1f} ms is {p95 / flush:.1f} flush intervals of {flush:.0f} ms "
            f"(limit {limits['max_delivery_p95_flush_intervals']:.1f})"
        )
    return problems


def check_runs(results: dict[str, Any], limits: dict[str, float]) -> list[str]:
    problems = []
    runs = results["runs"]
    launchers = results["config"]["launchers"]
    if runs["launched"] < limits["min_runs_per_launcher"] * launchers:
        problems.append(f"runs: only {runs['launched']} launched by {launchers} launchers")
    if runs["launched"] and runs["finished"] / runs["launched"] < limits["min_finished_fraction"]:
        problems.append(
            f"runs: {runs['finished']} of {runs['launched']} launched runs finished "
            f"({runs['unfinished']} left {runs['by_status']})"
        )
    if runs["failed"] > limits["max_failed_runs"]:
        problems.append(f"runs: {runs['failed']} failed ({runs['failure_kinds'] or runs['by_status']})")
    for process, alive in sorted(results["processes_alive"].items()):
        if not alive:
            problems.append(f"{process}: the process died during the load test")
    return problems


def check(results: dict[str, Any], limits: dict[str, float] = THRESHOLDS) -> list[str]:
    """Every violated threshold, one sentence each; empty when the results pass."""
    try:
        noise = noise_credit(results, limits)
        return [
            *check_errors(results, limits),
            *check_latency(results, limits, noise),
            *check_streams(results, limits),
            *check_runs(results, limits),
        ]
    except (KeyError, TypeError, AttributeError) as error:
        raise ResultsError(f"results are missing a field or have a wrong type: {error!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: check_load_results.py RESULTS.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        results = load(path)
        problems = check(results)
    except ResultsError as error:
        print(f"check_load_results: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    runs, ws = results["runs"], results["websocket"]
    print(
        f"PASS: {path} is within every threshold ({results['mode']} run: {runs['launched']} runs, "
        f"{ws['lines']} websocket lines, noise credit {noise_credit(results, THRESHOLDS):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
