"""Liveness and readiness of processes that serve no HTTP: Celery workers and beat.

    python -m ops.worker_probe live  [--max-age 60]    # the worker's heartbeat thread still ticks
    python -m ops.worker_probe ready [--max-age 30]    # ... and Redis took its last heartbeat
    python -m ops.worker_probe file PATH [--max-age 600]   # beat: its schedule file was synced

A worker's heartbeat thread (ops.worker_heartbeat) rewrites CONTROLPLANE_WORKER_HEARTBEAT_FILE
every few seconds with `published` or `failing`. Reading that file is the cheapest check there
is: no Django, no broker round trip (`celery inspect ping` needs a working broker and costs each
probe a connection, and fails every worker at once when Redis restarts). Beat syncs its schedule
file every few minutes while it sends tasks; the newest file starting with PATH counts (dbm adds
suffixes on some platforms). Exit 0 healthy, 1 not, with one line saying why. Standard library
only, so a probe starts in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PUBLISHED = "published"
FAILING = "failing"


def write_heartbeat(path: Path, published: bool) -> None:
    """Atomically replace the file: a probe never reads a half-written one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(PUBLISHED if published else FAILING)
    os.replace(partial, path)


def _newest(prefix: Path) -> Path | None:
    candidates = [p for p in prefix.parent.glob(prefix.name + "*") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def check(mode: str, path: Path, max_age: float, now: float | None = None) -> str | None:
    """None when healthy, else the reason."""
    found = _newest(path) if mode == "file" else (path if path.is_file() else None)
    if found is None:
        return f"{path} does not exist (yet)"
    age = (time.time() if now is None else now) - found.stat().st_mtime
    if age > max_age:
        return f"{found} is {age:.0f} s old (> {max_age:.0f} s)"
    if mode == "ready" and found.read_text().strip() != PUBLISHED:
        return "the last heartbeat did not reach Redis"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.worker_probe", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("live", "ready", "file"))
    parser.add_argument("path", nargs="?", help="file mode: the schedule file (a prefix)")
    parser.add_argument("--max-age", type=float, default=None, help="seconds")
    args = parser.parse_args(argv)
    if args.mode == "file":
        if not args.path:
            parser.error("file mode needs PATH")
        path = Path(args.path)
    else:
        configured = os.environ.get("CONTROLPLANE_WORKER_HEARTBEAT_FILE", "")
        if not configured:
            sys.stderr.write("CONTROLPLANE_WORKER_HEARTBEAT_FILE is not set\n")
            return 1
        path = Path(configured)
    default_age = {"live": 60.0, "ready": 30.0, "file": 600.0}[args.mode]
    problem = check(args.mode, path, args.max_age or default_age)
    if problem:
        sys.stderr.write(f"{args.mode}: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
