"""scripts/check_coverage.py: the coverage gate reads coverage's JSON report and names what is under."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scripts import check_coverage
from scripts.check_coverage import GATED_MODULES, check

ROOT = Path(__file__).resolve().parents[2]


def summary(covered: int, statements: int, branches: int = 0, covered_branches: int = 0) -> dict[str, Any]:
    total = statements + branches
    return {
        "covered_lines": covered,
        "num_statements": statements,
        "missing_lines": statements - covered,
        "num_branches": branches,
        "covered_branches": covered_branches,
        "missing_branches": branches - covered_branches,
        "percent_covered": 100.0 * (covered + covered_branches) / total if total else 100.0,
    }


def report(overall: dict[str, Any], **modules: dict[str, Any]) -> dict[str, Any]:
    files = {name: {"summary": summary(100, 100)} for name in GATED_MODULES}
    files.update({name.replace("__", "/") + ".py": {"summary": value} for name, value in modules.items()})
    return {"meta": {"version": "7"}, "files": files, "totals": overall}


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_coverage.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_report_over_every_gate_passes_and_prints_each_gated_module() -> None:
    result = check(report(summary(90, 100)))
    assert result.failures == []
    assert result.overall.percent == pytest.approx(90.0)
    assert [getattr(figure, "name", figure) for figure in result.modules] == list(GATED_MODULES)


def test_a_gated_module_under_95_percent_fails_with_one_line_naming_it() -> None:
    result = check(report(summary(90, 100), runs__services=summary(186, 200, 20, 19)))
    # (186 + 19) / 220 = 93.18 %: lines and branches count together, as coverage reports them.
    assert result.failures == ["runs/services.py 93.18% is under its gate of 95%"]


def test_exactly_95_percent_passes_the_module_gate() -> None:
    assert check(report(summary(90, 100), workers__supervisor=summary(95, 100))).failures == []


def test_overall_under_85_percent_fails_even_when_the_modules_pass() -> None:
    result = check(report(summary(849, 1000)))
    assert result.failures == ["overall 84.90% is under its gate of 85%"]


def test_a_gated_module_missing_from_the_report_fails_rather_than_passing_silently() -> None:
    data = report(summary(90, 100))
    del data["files"]["workers/streams.py"]
    result = check(data)
    assert result.failures == ["workers/streams.py is not in the report, so it is under its gate of 95%"]
    assert "workers/streams.py" in result.modules


def test_the_script_exits_1_with_one_line_per_module_under_its_gate(tmp_path: Path) -> None:
    path = tmp_path / "coverage.json"
    data = report(summary(80, 100), runs__reconciler=summary(10, 20), runs__protocol=summary(0, 5))
    path.write_text(json.dumps(data))
    result = run_script(str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "coverage gate: overall 80.00% is under its gate of 85%",
        "coverage gate: runs/reconciler.py 50.00% is under its gate of 95%",
        "coverage gate: runs/protocol.py 0.00% is under its gate of 95%",
    ]
    assert "runs/reconciler.py" in result.stdout
    assert "50.00%" in result.stdout


def test_the_script_exits_0_on_a_passing_report(tmp_path: Path) -> None:
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(report(summary(86, 100))))
    result = run_script(str(path), "--overall", "85", "--modules", "95")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[-1].split()[:2] == ["overall", "86.00%"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no coverage report at"),
        ("{not json", "is not a readable coverage JSON report"),
        ('{"files": {}}', "is not a coverage JSON report"),
        ('{"files": {}, "totals": {"percent_covered": 90}}', "the summary of overall lacks"),
    ],
)
def test_an_unreadable_report_is_one_line_and_exit_1_not_a_traceback(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "coverage.json"
    if content is not None:
        path.write_text(content)
    result = run_script(str(path))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_gate_outside_0_to_100_is_refused() -> None:
    result = run_script("--overall", "120")
    assert result.returncode == 2
    assert "must be between 0 and 100" in result.stderr


def test_every_gated_module_exists_so_a_rename_cannot_drop_it_from_the_gate() -> None:
    assert [name for name in GATED_MODULES if not (ROOT / name).is_file()] == []


def test_coverage_measures_every_product_package_and_the_gate_reads_its_json_output() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["coverage"]
    packages = {path.parent.name for path in ROOT.glob("*/apps.py")} | {"controlplane", "workers"}
    assert packages <= set(config["run"]["source"])
    assert ROOT / config["json"]["output"] == check_coverage.DEFAULT_REPORT
    # The e2e stack and the chaos workers are subprocesses: without this they measure nothing.
    assert "subprocess" in config["run"]["patch"]
