"""The coverage gate: the whole product, and stricter gates on the modules that keep runs alive.

Usage: ``python scripts/check_coverage.py [REPORT] [--overall PERCENT] [--modules PERCENT]``

Reads coverage.py's JSON report (``coverage json``, or pytest-cov's ``--cov-report=json``; the
default path is the one ``[tool.coverage.json]`` in pyproject.toml names), prints the overall and
per-module figures, and exits 1 with one line per figure under its gate. Percentages are coverage's
own: covered lines plus covered branches over statements plus branches. docs/ci.md says why these
modules are gated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPORT = ROOT / "test-output" / "coverage.json"
OVERALL_GATE = 85.0
MODULE_GATE = 95.0

# The run lifecycle's services and the supervisor with the modules split out of it: the code that
# decides whether a run trains once, resumes, or is lost.
GATED_MODULES: tuple[str, ...] = (
    "runs/services.py",
    "runs/attempts.py",
    "runs/batches.py",
    "runs/reconciler.py",
    "workers/supervisor.py",
    "workers/launch.py",
    "workers/process.py",
    "workers/ingest.py",
    "workers/writer.py",
    "workers/files.py",
    "workers/watch.py",
    "workers/streams.py",
    "workers/sampling.py",
    "runs/protocol.py",
    "workers/preparation.py",
)


class ReportError(Exception):
    """The report cannot be read; the message is the one line printed."""


@dataclass(frozen=True)
class Figure:
    name: str
    percent: float
    statements: int
    missing_lines: int
    branches: int
    missing_branches: int


@dataclass(frozen=True)
class Result:
    overall: Figure
    modules: list[Figure | str]  # a module's figure, or its name when the report lacks it
    failures: list[str]


def _figure(name: str, summary: Mapping[str, Any]) -> Figure:
    try:
        return Figure(
            name=name,
            percent=float(summary["percent_covered"]),
            statements=int(summary["num_statements"]),
            missing_lines=int(summary["missing_lines"]),
            branches=int(summary.get("num_branches", 0)),
            missing_branches=int(summary.get("missing_branches", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"the summary of {name} lacks {exc}") from None


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"no coverage report at {path} (run the suite with --cov first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not a readable coverage JSON report: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or "totals" not in data:
        raise ReportError(f"{path} is not a coverage JSON report (no 'files' and 'totals')")
    return data


def check(
    report: Mapping[str, Any],
    *,
    overall_gate: float = OVERALL_GATE,
    module_gate: float = MODULE_GATE,
    modules: Sequence[str] = GATED_MODULES,
) -> Result:
    overall = _figure("overall", report["totals"])
    failures: list[str] = []
    if overall.percent < overall_gate:
        failures.append(f"overall {overall.percent:.2f}% is under its gate of {overall_gate:g}%")
    figures: list[Figure | str] = []
    files: Mapping[str, Any] = report["files"]
    for name in modules:
        entry = files.get(name)
        if not isinstance(entry, dict) or "summary" not in entry:
            figures.append(name)
            failures.append(f"{name} is not in the report, so it is under its gate of {module_gate:g}%")
            continue
        figure = _figure(name, entry["summary"])
        figures.append(figure)
        if figure.percent < module_gate:
            failures.append(f"{name} {figure.percent:.2f}% is under its gate of {module_gate:g}%")
    return Result(overall=overall, modules=figures, failures=failures)


def render(result: Result, overall_gate: float, module_gate: float) -> str:
    rows = [f"{'module':<28} {'cover':>8} {'gate':>6} {'stmts':>6} {'miss':>5} {'branch':>6} {'bmiss':>5}"]

    def row(figure: Figure | str, gate: float) -> str:
        if isinstance(figure, str):
            return f"{figure:<28} {'absent':>8} {gate:>5g}%"
        return (
            f"{figure.name:<28} {figure.percent:>7.2f}% {gate:>5g}% {figure.statements:>6} "
            f"{figure.missing_lines:>5} {figure.branches:>6} {figure.missing_branches:>5}"
        )

    rows.extend(row(figure, module_gate) for figure in result.modules)
    rows.append(row(result.overall, overall_gate))
    return "\n".join(rows)


def _percent(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a percentage, got {value!r}") from None
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {value!r}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail when coverage is under its gates.")
    parser.add_argument("report", nargs="?", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--overall", type=_percent, default=OVERALL_GATE, help="gate of the whole product")
    parser.add_argument("--modules", type=_percent, default=MODULE_GATE, help="gate of each gated module")
    args = parser.parse_args(argv)
    try:
        result = check(load_report(args.report), overall_gate=args.overall, module_gate=args.modules)
    except ReportError as exc:
        sys.stderr.write(f"coverage gate: {exc}\n")
        return 1
    sys.stdout.write(render(result, args.overall, args.modules) + "\n")
    for failure in result.failures:
        sys.stderr.write(f"coverage gate: {failure}\n")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
