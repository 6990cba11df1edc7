"""Events through the socket against events through the pipe, in the same run.

A child process reports `--lines` metric lines with the SDK (`Reporter.metric`, one line each),
once through `CONTROLPLANE_EVENTS_FD` (the pipe, read by workers.streams.read_lines as the
supervisor reads it) and once through `CONTROLPLANE_EVENTS_SOCKET` (workers/events_socket.py),
into a ChunkQueue drained by a thread, as the supervisor's loop drains it. Timed from the first
line taken to the channel's end-of-file, so the interpreter's start is not counted. Alternating
order, median of `--repeats`. No database: this is the channel alone.

Target: socket / pipe >= 0.8 (the channel that survives launchers costs at most a fifth).
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.events_socket import EventsSocket  # noqa: E402
from workers.streams import Chunk, ChunkQueue, read_lines  # noqa: E402

MAX_EVENT_LINE_BYTES = 1024 * 1024  # runs.protocol's (which imports Django)

CHILD = """
import sys
from workers.sdk import Reporter
with Reporter.from_env() as reporter:
    for step in range(int(sys.argv[1])):
        reporter.metric(step, {"train/loss": 1.0 / (step + 1), "lr": 0.001})
"""
TARGET = 0.8


def drain(chunks: queue.Queue[Chunk], expected: int) -> float:
    """Seconds from the first line to end-of-file; asserts every line arrived."""
    first: float | None = None
    count = 0
    while True:
        chunk = chunks.get(timeout=120)
        if chunk.data is None:
            break
        first = first or time.perf_counter()
        count += 1
    if count != expected or first is None:
        raise SystemExit(f"FAIL: {count} lines arrived of {expected}")
    return time.perf_counter() - first


def child_env(extra: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **extra}


def through_pipe(lines: int) -> float:
    chunks: queue.Queue[Chunk] = ChunkQueue()
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(lines)],
        env=child_env({"CONTROLPLANE_EVENTS_FD": str(write_fd)}),
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    reader = threading.Thread(
        target=read_lines, args=(os.fdopen(read_fd, "rb"), "events", chunks, MAX_EVENT_LINE_BYTES)
    )
    reader.start()
    seconds = drain(chunks, lines)
    child.wait()
    reader.join()
    return seconds


def through_socket(lines: int, directory: Path) -> float:
    chunks: queue.Queue[Chunk] = ChunkQueue()
    started: list[subprocess.Popen[bytes]] = []
    channel = EventsSocket(
        directory, chunks, MAX_EVENT_LINE_BYTES, lambda: not started or started[0].poll() is None
    )
    channel.bind()
    started.append(
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(lines)],
            env=child_env({"CONTROLPLANE_EVENTS_SOCKET": str(channel.path)}),
        )
    )
    channel.start("bench-socket")
    seconds = drain(chunks, lines)
    started[0].wait()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pipe: list[float] = []
    sock: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        for repeat in range(args.repeats):
            order = ("pipe", "socket") if repeat % 2 == 0 else ("socket", "pipe")
            for name in order:
                if name == "pipe":
                    pipe.append(through_pipe(args.lines))
                else:
                    sock.append(through_socket(args.lines, Path(directory)))
    pipe_rate = args.lines / statistics.median(pipe)
    socket_rate = args.lines / statistics.median(sock)
    ratio = socket_rate / pipe_rate
    print(f"lines per run: {args.lines}, repeats: {args.repeats} (median)")
    print(f"pipe   (CONTROLPLANE_EVENTS_FD):     {pipe_rate:,.0f} lines/s")
    print(f"socket (CONTROLPLANE_EVENTS_SOCKET): {socket_rate:,.0f} lines/s")
    print(f"socket / pipe: {ratio:.2f} (target >= {TARGET})")
    print("PASS" if ratio >= TARGET else "FAIL")
    if ratio < TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
