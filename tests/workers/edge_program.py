"""A training program for the supervisor's edge cases (tests/workers/test_supervisor_edges.py).

Speaks the real protocol through the SDK, plus what a buggy program might write: an event line
over the protocol's size limit, artifacts that are directories or not safetensors at all.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from workers.sdk import ENV_EVENTS_FD, Reporter, load_params


def main() -> int:
    params = load_params()
    mode = params["mode"]
    reporter = Reporter.from_env()
    if mode == "long_event":
        # One line of 1.5 MB, then a well-formed event: the first is skipped, the second kept.
        os.write(int(os.environ[ENV_EVENTS_FD]), b'{"type": "metric", "pad": "' + b"x" * 1_500_000 + b'"}\n')
        reporter.metric(1, {"train/loss": 0.25})
    elif mode == "files":
        Path("a-directory").mkdir()
        reporter.artifact("a-directory", "file")
        Path("broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header....")
        reporter.artifact("broken.safetensors", "model")
        Path("notes.txt").write_text("fine\n")
        reporter.artifact("notes.txt", "report")
    elif mode == "print":
        # Lines and points, no artifact: after the program ends, a supervisor has nothing else to write.
        count = int(params["lines"])
        for number in range(1, count + 1):
            print(f"line {number} " + "x" * 10)
            reporter.metric(number, {"lines": float(number)})
            if number % 100 == 0:
                sys.stdout.flush()
                time.sleep(float(params["seconds"]) * 100 / count)
    elif mode == "sleep":
        Path("program.pid").write_text(str(os.getpid()))
        deadline = time.monotonic() + float(params["seconds"])
        step = 0
        while time.monotonic() < deadline:
            step += 1
            print(f"tick {step}", flush=True)
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
