"""A process of a run reporting through the events socket (tests/workers/test_events_socket.py):
`THREADS` threads each report `LINES` metric lines of `KEYS` values, tagged with the writer."""

from __future__ import annotations

import os
import sys
import threading

from workers.sdk import Reporter


def main() -> None:
    writer, threads, lines, keys = sys.argv[1], *(int(arg) for arg in sys.argv[2:5])
    all_ranks = os.environ.get("ALL_RANKS") == "1"
    with Reporter.from_env(all_ranks=all_ranks) as reporter:
        print(f"writer {writer} enabled={reporter.enabled}", flush=True)

        def report(thread: int) -> None:
            for step in range(lines):
                values = {f"{writer}/{thread}/k{key}": float(step) for key in range(keys)}
                reporter.metric(step, values)

        workers = [threading.Thread(target=report, args=(thread,)) for thread in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()


if __name__ == "__main__":
    main()
