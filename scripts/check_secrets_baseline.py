"""Fail unless every finding in a detect-secrets baseline was audited as a false positive.

Usage: ``python scripts/check_secrets_baseline.py [BASELINE]``

``./dev scan`` first refreshes a copy of ``.secrets.baseline`` with ``detect-secrets scan
--baseline`` (which keeps the labels of findings it already knows and adds new ones unlabelled),
then runs this on the copy. detect-secrets 1.5 has no "fail on unaudited" switch of its own.
Exits 1 with one line per finding that is unaudited or labelled a real secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = ROOT / ".secrets.baseline"
AUDIT_HINT = "label it: .venv/bin/detect-secrets audit .secrets.baseline"


class BaselineError(Exception):
    """The baseline cannot be read; the message is the one line printed."""


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BaselineError(f"no baseline at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{path} is not a readable detect-secrets baseline: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise BaselineError(f"{path} is not a detect-secrets baseline (no 'results')")
    return data


def problems(baseline: dict[str, Any]) -> list[str]:
    """One line per finding that is not audited as a false positive."""
    lines: list[str] = []
    for filename, findings in sorted(baseline["results"].items()):
        for finding in findings:
            where = f"{filename}:{finding.get('line_number', '?')} ({finding.get('type', 'unknown type')})"
            label = finding.get("is_secret")
            if label is None:
                lines.append(f"{where} is not audited; {AUDIT_HINT}")
            elif label is not False:
                lines.append(f"{where} is labelled a real secret: remove it from the repository")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail on unaudited or real secrets in a baseline.")
    parser.add_argument("baseline", nargs="?", type=Path, default=DEFAULT_BASELINE)
    args = parser.parse_args(argv)
    try:
        found = problems(load_baseline(args.baseline))
    except BaselineError as exc:
        sys.stderr.write(f"detect-secrets: {exc}\n")
        return 1
    for line in found:
        sys.stderr.write(f"detect-secrets: {line}\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
