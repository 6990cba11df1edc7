"""Merge the JUnit files of the suite's halves into one (usage: merge_junit.py OUT IN...).

`./dev coverage` runs the suite as two pytest processes (tests/shards.py); CI keeps one
test-output/junit.xml per run, which scripts/flaky_report.py reads.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET  # nosec B405 - our own pytest's JUnit files, not untrusted input
from pathlib import Path


def merge(inputs: list[Path]) -> ET.Element:
    merged = ET.Element("testsuites")
    for path in inputs:
        root = ET.parse(path).getroot()  # noqa: S314  # nosec B314
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        merged.extend(suites)
    return merged


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: merge_junit.py OUT IN...\n")
        return 2
    present = [Path(name) for name in argv[1:] if Path(name).is_file()]
    ET.ElementTree(merge(present)).write(argv[0], encoding="utf-8", xml_declaration=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
