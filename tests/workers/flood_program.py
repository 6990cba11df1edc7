"""A program that reports as fast as its pipes take it, for the backpressure test and the ingest
bench: multi-point metric lines (the SDK's `metrics`) and a log line per 100 steps, for `seconds`
seconds or `points` steps, whichever comes first; it prints how many steps it reported."""

from __future__ import annotations

import json
import os
import sys
import time

from workers.sdk import Reporter, load_params


def main() -> None:
    params = load_params()
    seconds = float(params.get("seconds", 0) or 0)
    total = int(params.get("points", 0) or 0)
    keys = [f"k{i:02d}" for i in range(int(params.get("keys", 1) or 1))]
    per_line = int(params.get("per_line", 1000) or 1000)
    deadline = time.monotonic() + seconds if seconds else float("inf")
    step = 0
    with Reporter.from_env() as reporter:
        while time.monotonic() < deadline and (not total or step < total):
            count = per_line if not total else min(per_line, total - step)
            batch = [(s, {key: float(s % 997) for key in keys}) for s in range(step, step + count)]
            if per_line == 1:
                reporter.metric(*batch[0])
            else:
                reporter.metrics(batch)
            for s in range(step, step + count, 100):
                sys.stdout.write(f"step {s} loss {s % 997}\n")
            step += count
        sys.stdout.flush()
    os.write(1, (json.dumps({"reported": step}) + "\n").encode())


if __name__ == "__main__":
    main()
