"""Human tables and machine JSON for cpctl."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from controlplane_client.types import Run


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        sys.stdout.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def run_summary(run: Run) -> str:
    progress = run.get("progress")
    step = f" step {progress['step']}/{progress['total'] or '?'}" if progress else ""
    error = run.get("error")
    why = f": {error['kind']}: {error['message']}" if error else ""
    return f"run {run['id']} {run.get('name', '')!r} {run['status']}{step}{why}"


def run_rows(runs: Sequence[Run]) -> list[list[Any]]:
    return [
        [
            r["id"],
            r.get("name", ""),
            r.get("program", ""),
            r["status"],
            r.get("owner", ""),
            r.get("created_at", ""),
        ]
        for r in runs
    ]


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.active = sys.stderr.isatty()

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.active:
            return
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r{name[:30]:30} [{bar:30}] {share:6.1%} {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def say(*parts: object, file: TextIO | None = None) -> None:
    """print(), for a command line whose output is its purpose."""
    (file or sys.stdout).write(" ".join(str(part) for part in parts) + "\n")
