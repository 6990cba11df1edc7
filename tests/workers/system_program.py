"""A program for the system-metrics tests (tests/workers/test_system_metrics.py, tests/e2e):
holds some memory, keeps one core busy for a while, reports a training metric, and can leave a
child behind that keeps its pipes open after it exits (so the supervisor waits, sampling nothing).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from workers.sdk import Reporter, load_params


def main() -> int:
    params = load_params()
    reporter = Reporter.from_env()
    held = bytearray(int(params["mib"]) * 2**20)  # touched: resident, not only reserved
    deadline = time.monotonic() + float(params["seconds"])
    step = 0
    while time.monotonic() < deadline:
        step += 1
        if step % 200_000 == 0:
            reporter.metric(step // 200_000, {"train/loss": 1.0 / step})
    if params["linger"]:
        # Inherits stdout and stderr: the supervisor sees open pipes until it ends the group.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path("exited_at.txt").write_text(repr(time.time()))
    del held
    return 0


if __name__ == "__main__":
    sys.exit(main())
