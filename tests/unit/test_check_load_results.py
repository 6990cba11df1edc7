"""The load test's judge (bench/check_load_results.py) on crafted result files."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import check_load_results as judge


def op(
    p95: float, throughput: float, count: int = 400, errors: int = 0, p50: float | None = None
) -> dict[str, Any]:
    return {
        "count": count,
        "errors": errors,
        "error_rate": errors / count if count else 0.0,
        "p50_ms": p50 if p50 is not None else p95 / 2,
        "p95_ms": p95,
        "p99_ms": p95 * 1.5,
        "max_ms": p95 * 2,
        "throughput_per_s": throughput,
        "error_samples": ["GET /api/v1/runs/: HTTP 500: boom"] if errors else [],
    }


def healthy() -> dict[str, Any]:
    """A small run as it came out on the 2-core machine, rounded."""
    reads_noload = {name: op(50.0, 23.0) for name in judge.READS}
    reads_load = {name: op(90.0, 16.0) for name in judge.READS}
    return {
        "schema": "controlplane-load/1",
        "mode": "small",
        "config": {"launchers": 2, "readers": 3, "viewers": 4, "flush_interval_s": 0.25},
        "phases": {
            "noload": {
                "window_s": 6.0,
                "ops": {
                    **reads_noload,
                    "healthz": op(40.0, 18.0),
                    "pg_select1": op(6.0, 75.0, count=450, p50=0.28),
                    "launch": op(60.0, 0.5, count=3, p50=50.0),
                },
            },
            "load": {
                "window_s": 15.0,
                "ops": {
                    **reads_load,
                    "run_detail": op(70.0, 16.0, p50=32.0),
                    "healthz": op(110.0, 16.0),
                    "pg_select1": op(6.0, 69.0, count=1000, p50=0.28),
                    "launch": op(390.0, 0.6, count=10, p50=95.0),
                    "run_poll": op(250.0, 3.6, count=55),
                },
            },
        },
        "websocket": {
            "connections": 20,
            "connect_errors": 0,
            "stalls": 0,
            "frames": 364,
            "lines": 4040,
            "gaps": 0,
            "duplicates": 0,
            "missing_lines": 0,
            "incomplete_viewings": 0,
            "delivery_latency_ms": {"count": 1990, "p50": 156.0, "p95": 280.0},
            "error_samples": [],
        },
        "runs": {
            "launched": 10,
            "finished": 10,
            "succeeded": 10,
            "failed": 0,
            "unfinished": 0,
            "by_status": {"succeeded": 10},
            "failure_kinds": {},
        },
        "processes_alive": {"web": True, "worker": True},
    }


def write(tmp_path: Path, results: Any) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return path


def test_a_healthy_run_passes_and_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert judge.check(healthy()) == []
    assert judge.main([str(write(tmp_path, healthy()))]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith("PASS: ")
    assert "10 runs, 4040 websocket lines" in out[0]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(results: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = results
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


VIOLATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "errors on a read",
        _set("phases.load.ops.runs_list", op(90.0, 16.0, count=500, errors=2)),
        "runs_list (load): 2 errors in 500",
    ),
    (
        "errors on the baseline",
        _set("phases.noload.ops.healthz", op(40.0, 18.0, errors=1)),
        "healthz (noload): 1 errors",
    ),
    ("refused websockets", _set("websocket.connect_errors", 1), "websocket: 1 of 21 connections failed"),
    (
        "slow reads under load",
        _set("phases.load.ops.logs_after", op(201.0, 16.0)),
        "logs_after: p95 under load 201.0 ms is 4.02x",
    ),
    (
        "lost read throughput",
        _set("phases.load.ops.metrics", op(90.0, 8.0)),
        "metrics: 8.0/s under load is 0.35x",
    ),
    (
        "slow healthz",
        _set("phases.load.ops.healthz", op(201.0, 16.0)),
        "healthz: p95 under load 201.0 ms is 5.03x",
    ),
    (
        "slow launches",
        _set("phases.load.ops.launch", op(900.0, 0.5, count=10, p50=260.0)),
        "launch: median 260.0 ms under load is 8.12x",
    ),
    (
        "too few samples",
        _set("phases.noload.ops.run_detail", op(50.0, 3.0, count=12)),
        "run_detail: only 12 successful samples no-load",
    ),
    ("a gap", _set("websocket.gaps", 1), "websocket: 1 gaps"),
    ("a duplicate", _set("websocket.duplicates", 2), "websocket: 2 duplicates"),
    ("missing lines", _set("websocket.missing_lines", 3), "websocket: 3 missing lines"),
    ("a stalled viewer", _set("websocket.incomplete_viewings", 1), "websocket: 1 incomplete viewings"),
    ("silent viewers", _set("websocket.lines", 0), "websocket: 4 viewers received no line at all"),
    (
        "late delivery",
        _set("websocket.delivery_latency_ms", {"count": 10, "p50": 900.0, "p95": 1600.0}),
        "delivery p95 1600.0 ms is 6.4 flush intervals",
    ),
    (
        "an unfinished run",
        lambda r: r["runs"].update(
            finished=9, succeeded=9, unfinished=1, by_status={"succeeded": 9, "running": 1}
        ),
        "runs: 9 of 10 launched runs finished",
    ),
    (
        "a failed run",
        lambda r: r["runs"].update(succeeded=9, failed=1, failure_kinds={"infrastructure/lease_expired": 1}),
        "runs: 1 failed ({'infrastructure/lease_expired': 1})",
    ),
    (
        "nothing launched",
        lambda r: r["runs"].update(launched=1, finished=1, succeeded=1, by_status={"succeeded": 1}),
        "runs: only 1 launched by 2 launchers",
    ),
    ("a dead worker", _set("processes_alive.worker", False), "worker: the process died during the load test"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [case[1:] for case in VIOLATIONS], ids=[case[0] for case in VIOLATIONS]
)
def test_each_violated_threshold_gives_one_line_and_exit_one(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    results = copy.deepcopy(healthy())
    mutate(results)
    problems = judge.check(results)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert judge.main([str(write(tmp_path, results))]) == 1
    assert capsys.readouterr().out.splitlines() == [f"FAIL {problems[0]}"]


def test_every_violation_is_listed_not_only_the_first() -> None:
    results = healthy()
    results["websocket"]["gaps"] = 1
    results["websocket"]["duplicates"] = 1
    results["processes_alive"]["web"] = False
    assert len(judge.check(results)) == 3


def test_a_slower_machine_during_the_load_phase_earns_a_noise_credit() -> None:
    results = healthy()
    results["phases"]["load"]["ops"]["logs_after"] = op(250.0, 16.0)  # 5x the no-load p95
    assert judge.check(results) != []
    # Postgres' own SELECT 1 got 1.5x slower in the same window: 5x is within 4x * 1.5.
    results["phases"]["load"]["ops"]["pg_select1"]["p50_ms"] = 0.42
    assert judge.check(results) == []


def test_the_noise_credit_is_capped() -> None:
    results = healthy()
    results["phases"]["load"]["ops"]["logs_after"] = op(450.0, 16.0)  # 9x
    results["phases"]["load"]["ops"]["pg_select1"]["p50_ms"] = 2.8  # 10x slower, credited 2x at most
    assert judge.noise_credit(results, judge.THRESHOLDS) == judge.THRESHOLDS["max_noise_credit"]
    problems = judge.check(results)
    assert len(problems) == 1
    assert "noise credit 2.00" in problems[0]


def test_a_faster_load_phase_gives_no_discount() -> None:
    results = healthy()
    results["phases"]["load"]["ops"]["pg_select1"]["p50_ms"] = 0.1
    assert judge.noise_credit(results, judge.THRESHOLDS) == 1.0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        (json.dumps({"schema": "something-else/1"}), "not a load test's results"),
        (json.dumps(["a", "list"]), "not a load test's results"),
        (json.dumps({"schema": "controlplane-load/1", "phases": {}}), "missing a field"),
    ],
    ids=["missing file", "not json", "another schema", "not an object", "missing fields"],
)
def test_a_file_that_is_not_results_exits_two_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    assert judge.main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert expected in lines[0]
    assert lines[0].startswith("check_load_results: ")


def test_no_argument_is_a_usage_error() -> None:
    assert judge.main([]) == 2
    assert judge.main(["a.json", "b.json"]) == 2
