"""Flaky tests are tracked: the report over JUnit files of several runs, and the quarantine marker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from scripts import flaky_report

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "junit"
OUTAGE = "tests.chaos.test_faults::test_a_postgres_outage_of_thirty_seconds_loses_no_line"


# --- scripts/flaky_report.py ------------------------------------------------------------------


def test_runs_are_found_by_commit_and_run_in_file_or_folder_names_and_ordered_by_run() -> None:
    runs = flaky_report.find_runs(FIXTURES)
    assert [(run.run, run.attempt, run.commit[:7]) for run in runs] == [
        (101, 1, "aaaaaaa"),
        (102, 1, "aaaaaaa"),
        (103, 1, "bbbbbbb"),
        (103, 2, "bbbbbbb"),
    ]
    assert runs[1].path.name == "junit.xml"  # the layout of a downloaded artifact


def test_a_test_that_passed_and_failed_on_one_commit_is_flaky_and_a_quarantined_xfail_counts_as_failed() -> (
    None
):
    flaky = flaky_report.flaky_tests(flaky_report.find_runs(FIXTURES))
    assert [(entry.test, entry.commit[:7], entry.passed, entry.failed) for entry in flaky] == [
        ("tests.api.test_runs::test_quarantined", "aaaaaaa", ["102.1"], ["101.1"]),
        (OUTAGE, "aaaaaaa", ["102.1"], ["101.1"]),
    ]


def test_a_test_broken_on_one_commit_and_passing_on_another_is_not_flaky() -> None:
    # test_stable passes on aaaaaaa and errors in both runs of bbbbbbb: a regression, not a flake.
    flaky = flaky_report.flaky_tests(flaky_report.find_runs(FIXTURES))
    assert "tests.unit.test_env::test_stable" not in {entry.test for entry in flaky}


def test_only_the_last_n_runs_are_compared(capsys: pytest.CaptureFixture[str]) -> None:
    assert flaky_report.main([str(FIXTURES), "--last", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"runs": 2, "flaky": []}


def test_the_report_names_each_flaky_test_and_can_fail_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert flaky_report.main([str(FIXTURES), "--fail-on-flaky"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "4 runs compared, 2 flaky tests"
    assert f"FLAKY {OUTAGE} on aaaaaaa11111: passed in 102.1; failed in 101.1" in out


def test_files_without_a_commit_in_their_name_are_skipped_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(next(FIXTURES.glob("*.xml")), tmp_path / "junit.xml")
    assert flaky_report.find_runs(tmp_path) == []
    assert "no junit-<sha>-<run> in its name" in capsys.readouterr().err
    assert flaky_report.main([str(tmp_path / "missing")]) == 2


# --- the quarantine marker --------------------------------------------------------------------

SUITE = """
import pytest

@pytest.mark.quarantine(reason="times out under load", issue="https://example.com/issues/16")
def test_flaky_that_fails():
    assert False

@pytest.mark.quarantine(reason="sometimes slow", issue="#17")
def test_flaky_that_passes():
    pass

def test_ordinary():
    pass
"""


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "DJANGO_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.quarantine", "-p", "no:django", "-p", "no:cacheprovider",
         "--strict-markers", "-rA", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_quarantined_test_runs_reports_its_outcome_and_does_not_gate(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    result = _pytest(tmp_path, f"--junitxml={tmp_path / 'junit.xml'}")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "1 passed, 1 xfailed, 1 xpassed" in out
    assert "quarantined tests (reported, not gating)" in out
    assert (
        "QUARANTINED FAILED test_suite.py::test_flaky_that_fails: times out under load "
        "(https://example.com/issues/16)"
    ) in out
    assert "QUARANTINED PASSED test_suite.py::test_flaky_that_passes: sometimes slow (#17)" in out
    # JUnit keeps the quarantine and the real outcome of each run, for the flaky report.
    cases = {case.get("name"): case for case in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")}
    properties = {
        name: {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        for name, case in cases.items()
    }
    assert properties["test_flaky_that_fails"] == {
        "quarantine": "https://example.com/issues/16 times out under load",
        "quarantine_outcome": "failed",
    }
    assert properties["test_flaky_that_passes"]["quarantine_outcome"] == "passed"
    assert properties["test_ordinary"] == {}
    skipped = cases["test_flaky_that_fails"].find("skipped")
    assert skipped is not None and skipped.get("type") == "pytest.xfail"


def test_a_quarantine_without_reason_or_issue_is_refused(tmp_path: Path) -> None:
    (tmp_path / "test_bad.py").write_text(
        "import pytest\n\n@pytest.mark.quarantine(reason='flaky')\ndef test_x():\n    pass\n"
    )
    result = _pytest(tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr  # usage error
    assert "use @pytest.mark.quarantine(reason=..., issue=...)" in result.stdout + result.stderr


def test_the_marker_is_registered_for_the_whole_suite() -> None:
    assert "quarantine(reason, issue)" in (ROOT / "pyproject.toml").read_text()
    assert "from tests.quarantine import" in (ROOT / "tests" / "conftest.py").read_text()
