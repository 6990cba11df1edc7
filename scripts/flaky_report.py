"""List the tests that both passed and failed on the same commit, from the last N JUnit files.

    python scripts/flaky_report.py DIRECTORY [--last N] [--json] [--fail-on-flaky]

DIRECTORY holds one JUnit file per CI run, named by commit and run: `junit-<sha>-<run>-<try>.xml`,
or the artifacts as `gh run download` lays them out, `junit-<sha>-<run>-<try>/junit.xml`
(tests.yml uploads each run's test-output/junit.xml under that artifact name). Runs are ordered
by run number and try; the last N are compared. The same code passing and failing is what makes a
test flaky, so outcomes are grouped by commit, never across commits (a fix between two commits is
not flakiness). A quarantined test's XFAIL counts as a failure and its XPASS as a pass
(tests/quarantine.py), so it keeps being counted until it is fixed. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET  # nosec B405 - our own CI's JUnit files, not untrusted input
from dataclasses import dataclass, field
from pathlib import Path

NAME = re.compile(r"junit-(?P<commit>[0-9a-f]{7,40})-(?P<run>\d+)(?:-(?P<attempt>\d+))?")


@dataclass(frozen=True, order=True)
class RunFile:
    run: int
    attempt: int
    commit: str
    path: Path


@dataclass
class Flaky:
    test: str
    commit: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def find_runs(directory: Path) -> list[RunFile]:
    """Every JUnit file under `directory` whose name (or folder's name) says commit and run."""
    found = []
    for path in sorted(directory.rglob("*.xml")):
        match = NAME.search(path.stem) or NAME.search(path.parent.name)
        if match is None:
            sys.stderr.write(f"flaky_report: skipping {path}: no junit-<sha>-<run> in its name\n")
            continue
        found.append(RunFile(int(match["run"]), int(match["attempt"] or 1), match["commit"], path))
    return sorted(found)


def outcomes(path: Path) -> dict[str, str]:
    """Test id → "passed" or "failed"; plain skips are left out (they say nothing about flakiness)."""
    result: dict[str, str] = {}
    # Our own CI's files; and Python 3.11's bundled expat refuses entity expansion attacks.
    root = ET.parse(path).getroot()  # noqa: S314  # nosec B314
    for case in root.iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            result[test] = "failed"
        elif (skipped := case.find("skipped")) is not None:
            if skipped.get("type") == "pytest.xfail":
                result[test] = "failed"  # an expected failure still failed
        else:
            result[test] = "passed"
    return result


def flaky_tests(runs: list[RunFile]) -> list[Flaky]:
    seen: dict[tuple[str, str], Flaky] = {}
    for run in runs:
        label = f"{run.run}.{run.attempt}"
        for test, result in outcomes(run.path).items():
            entry = seen.setdefault((run.commit, test), Flaky(test, run.commit))
            (entry.passed if result == "passed" else entry.failed).append(label)
    return sorted(
        (entry for entry in seen.values() if entry.passed and entry.failed),
        key=lambda entry: (-len(entry.failed), entry.test, entry.commit),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--last", type=int, default=30, help="compare the last N runs (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    parser.add_argument("--fail-on-flaky", action="store_true", help="exit 1 when a flaky test is found")
    args = parser.parse_args(argv)
    if not args.directory.is_dir() or args.last < 1:
        sys.stderr.write(f"flaky_report: {args.directory} is not a directory, or --last < 1\n")
        return 2
    runs = find_runs(args.directory)[-args.last :]
    flaky = flaky_tests(runs)
    if args.json:
        sys.stdout.write(
            json.dumps({"runs": len(runs), "flaky": [vars(entry) for entry in flaky]}, indent=2) + "\n"
        )
    else:
        lines = [f"{len(runs)} runs compared, {len(flaky)} flaky tests"] + [
            f"FLAKY {entry.test} on {entry.commit[:12]}: "
            f"passed in {', '.join(entry.passed)}; failed in {', '.join(entry.failed)}"
            for entry in flaky
        ]
        sys.stdout.write("\n".join(lines) + "\n")
    return 1 if flaky and args.fail_on_flaky else 0


if __name__ == "__main__":
    sys.exit(main())
