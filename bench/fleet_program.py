"""The fleet bench's training program: it records what it was given, sleeps, and records its end.

Its own view is what bench_fleet.py checks for double booking: the devices in its
`CUDA_VISIBLE_DEVICES` and the host it ran on (each bench worker stands for a host and gives its
programs a `HOME` of its own, one of the few variables a program inherits), with wall-clock start
and end. One JSON file per attempt in the `out` directory; the first stdout line carries the
start time too (bench_launch.py reads it). Imports nothing but the SDK.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from workers.sdk import load_params


def main() -> int:
    started = time.time()
    params = load_params()
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    host = Path(os.environ.get("HOME", "")).name
    print(f"fleet probe started={started:.6f} host={host} devices={devices}", flush=True)
    time.sleep(float(params.get("seconds", 2.0)))
    record = {
        "run_id": int(os.environ["CONTROLPLANE_RUN_ID"]),
        "attempt": int(os.environ["CONTROLPLANE_ATTEMPT"]),
        "host": host,
        "devices": [int(index) for index in devices.split(",") if index],
        "start": started,
        "end": time.time(),
    }
    out = Path(str(params["out"]))
    target = out / f"{record['run_id']}-{record['attempt']}.json"
    target.with_suffix(".tmp").write_text(json.dumps(record))
    target.with_suffix(".tmp").rename(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
