"""The load test's training program: a steady drip of log lines and metric points, then exit 0.

Each line carries the wall-clock time it was printed, so the load test can measure delivery
from the program's print to a websocket viewer, besides the supervisor's own line timestamp.
Registered as `loadgen` by `bench/load_programs.toml`; imports nothing but the SDK, so a run
costs one small Python process.
"""

from __future__ import annotations

import sys
import time

from workers.sdk import Reporter, load_params


def main() -> int:
    params = load_params()
    lines = int(params.get("lines", 200))
    seconds = float(params.get("seconds", 2.0))
    reporter = Reporter.from_env()
    pause = seconds / max(1, lines)
    started = time.monotonic()
    for i in range(lines):
        # Paced against the start rather than slept per line, so a busy scheduler does not
        # stretch the run (its length bounds how long a launcher waits).
        delay = started + i * pause - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        print(f"load line {i + 1} emitted={time.time():.6f}", flush=True)
        if i % 10 == 0:
            reporter.metric(i, {"train/loss": 1.0 / (i + 1)})
            reporter.progress(i + 1, lines)
    reporter.progress(lines, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
