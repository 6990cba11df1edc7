"""scripts/check_secrets_baseline.py and the committed .secrets.baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from scripts.check_secrets_baseline import load_baseline, problems

ROOT = Path(__file__).resolve().parents[2]


def finding(line: int, **label: Any) -> dict[str, Any]:
    return {
        "type": "Secret Keyword",
        "filename": "x.py",
        "hashed_secret": "0" * 40,
        "line_number": line,
        **label,
    }


def run_script(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_secrets_baseline.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_findings_audited_as_false_positives_pass() -> None:
    assert problems({"results": {"tests/conftest.py": [finding(3, is_secret=False)]}}) == []


def test_an_unaudited_finding_and_a_real_secret_each_fail_with_their_place() -> None:
    baseline = {
        "results": {
            "b.py": [finding(7, is_secret=True)],
            "a.py": [finding(2)],
        }
    }
    assert problems(baseline) == [
        "a.py:2 (Secret Keyword) is not audited; label it: .venv/bin/detect-secrets audit .secrets.baseline",
        "b.py:7 (Secret Keyword) is labelled a real secret: remove it from the repository",
    ]


def test_the_script_exits_1_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"results": {"a.py": [finding(1), finding(9, is_secret=False)]}}))
    result = run_script(path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "detect-secrets: a.py:1 (Secret Keyword) is not audited; "
        "label it: .venv/bin/detect-secrets audit .secrets.baseline"
    ]


def test_a_missing_or_malformed_baseline_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = run_script(tmp_path / "nope.json")
    assert (missing.returncode, missing.stderr.count("\n")) == (1, 1)
    assert "no baseline at" in missing.stderr
    (tmp_path / "bad.json").write_text("[]")
    malformed = run_script(tmp_path / "bad.json")
    assert (malformed.returncode, malformed.stderr.count("\n")) == (1, 1)
    assert "is not a detect-secrets baseline" in malformed.stderr


def test_the_committed_baseline_holds_only_audited_false_positives_and_skips_the_lockfile() -> None:
    baseline = load_baseline(ROOT / ".secrets.baseline")
    assert problems(baseline) == []
    excluded = [f for f in baseline["filters_used"] if f["path"].endswith("should_exclude_file")]
    assert excluded
    assert any("package-lock" in pattern for pattern in excluded[0]["pattern"])
    # Every listed file still exists: a stale baseline hides nothing, but it misleads the reader.
    assert [name for name in baseline["results"] if not (ROOT / name).is_file()] == []
