"""Live latency: a line printed by a program → the same line at a websocket client (issue #15).

The production topology on a throwaway database (bench/load_stack.py: uvicorn, a Celery worker,
Postgres, Redis) runs `bench/load_program.py`, which stamps every line with the wall-clock time
it printed it (`emitted=`); a client takes `received - emitted` for every line (same machine,
same clock), so the figure holds the pipe, the supervisor's batching, the transaction, Redis, the
web process and the socket.

1. idle: one run printing 20 lines a second for 10 s, one viewer. Target: p50 < 50 ms.
2. busy: 4 runs printing 100 lines a second each (the load test's program: a metric point every
   10 lines) for 20 s, 50 viewers spread over them, each from `?after=0` to the run's end.
   Targets: p99 < 250 ms; zero gaps, duplicates or missing lines in every viewing.

It prints the busy phase's p99 against the idle phase's (a ratio in the same run, as every bench
does) beside the absolute targets, which are what it judges.
Usage: .venv/bin/python bench/bench_latency.py [--busy-rate 100] [--viewers 50] [--client-processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import load_stack  # noqa: E402
from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402

IDLE_P50_MS = 50.0
BUSY_P99_MS = 250.0
EMITTED = re.compile(r"emitted=(\d+\.\d+)")
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


@dataclass
class Viewing:
    run_id: int
    latencies_ms: list[float] = field(default_factory=list)
    program_lines: int = 0
    gaps: int = 0
    duplicates: int = 0
    ended: bool = False


async def view(ws_base: str, token: str, run_id: int) -> Viewing:
    """Read a run's socket from seq 0 to its terminal status; every line's delay, every gap."""
    seen = Viewing(run_id)
    last = 0
    async with connect(
        f"{ws_base}/ws/runs/{run_id}/?after=0",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=30,
        max_size=2**24,
    ) as socket:
        while True:
            try:
                message = await asyncio.wait_for(socket.recv(), timeout=2.0 if seen.ended else 60.0)
            except TimeoutError:
                return seen
            received = time.time()
            frame = json.loads(message)
            if frame.get("type") == "status" and frame.get("status") in TERMINAL:
                seen.ended = True
            if frame.get("type") != "log":
                continue
            for line in frame["lines"]:
                seq = int(line["seq"])
                if seq <= last:
                    seen.duplicates += 1
                    continue
                seen.gaps += seq > last + 1
                last = seq
                emitted = EMITTED.search(line["line"])
                if emitted:
                    seen.program_lines += 1
                    seen.latencies_ms.append((received - float(emitted.group(1))) * 1000)


async def launch(client: httpx.AsyncClient, lines: int, seconds: float) -> int:
    params = {"lines": lines, "seconds": seconds}
    response = await client.post(
        "/api/v1/runs/", json={"name": "latency", "program": "loadgen", "params": params}
    )
    response.raise_for_status()
    return int(response.json()["id"])


def view_in_process(ws_base: str, token: str, run_ids: list[int]) -> list[Viewing]:
    """One client process's share of the viewings (its own event loop and core time)."""

    async def gather() -> list[Viewing]:
        return list(await asyncio.gather(*(view(ws_base, token, run_id) for run_id in run_ids)))

    return asyncio.run(gather())


async def phase(
    stack: load_stack.Stack,
    token: str,
    runs: int,
    viewers: int,
    lines: int,
    seconds: float,
    processes: int = 1,
) -> list[Viewing]:
    """`processes` > 1: the viewers are spread over that many client processes, so the figure is
    the server's, not one client process's parsing of every viewer's frames."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, timeout=30) as client:
        run_ids = [await launch(client, lines, seconds) for _ in range(runs)]
    watched = [run_ids[i % runs] for i in range(viewers)]
    if processes <= 1:
        return await asyncio.gather(*(view(stack.ws_base, token, run_id) for run_id in watched))
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes) as pool:
        shares = [watched[i::processes] for i in range(processes)]
        done = await asyncio.gather(
            *(loop.run_in_executor(pool, view_in_process, stack.ws_base, token, share) for share in shares)
        )
    return [viewing for share in done for viewing in share]


def summary(name: str, viewings: list[Viewing], lines: int) -> dict[str, Any]:
    delays = sorted(d for v in viewings for d in v.latencies_ms)
    missing = sum(max(0, lines - v.program_lines) for v in viewings)

    def at(fraction: float) -> float:
        return delays[min(len(delays) - 1, int(fraction * len(delays)))] if delays else float("nan")

    result = {
        "phase": name,
        "viewings": len(viewings),
        "lines_received": len(delays),
        "p50_ms": round(at(0.5), 1),
        "p95_ms": round(at(0.95), 1),
        "p99_ms": round(at(0.99), 1),
        "max_ms": round(delays[-1], 1) if delays else None,
        "mean_ms": round(statistics.fmean(delays), 1) if delays else None,
        "gaps": sum(v.gaps for v in viewings),
        "duplicates": sum(v.duplicates for v in viewings),
        "missing": missing,
        "unfinished": sum(not v.ended for v in viewings),
    }
    print(json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--busy-rate", type=int, default=100, help="lines a second of each busy run")
    parser.add_argument("--busy-seconds", type=float, default=20.0)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="spread the busy phase's viewers over this many processes",
    )
    args = parser.parse_args()
    db_name = f"bench_latency_{os.getpid()}"
    queue = f"bench-latency-{os.getpid()}-{secrets.token_hex(3)}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    stack: load_stack.Stack | None = None
    create_database(db_name)
    try:
        setup_django(db_name, data_dir, redis=True)
        from bench.load_test import prepare_database

        token = prepare_database()
        (data_dir / "logs").mkdir()
        stack = load_stack.start(queue, slots=4, logs=data_dir / "logs")
        load_stack.wait_web_ready(stack, 90)
        print(f"load average: {os.getloadavg()}")
        idle = summary("idle", asyncio.run(phase(stack, token, 1, 1, 200, 10.0)), 200)
        busy_lines = int(args.busy_rate * args.busy_seconds)
        busy = summary(
            "busy",
            asyncio.run(
                phase(stack, token, 4, args.viewers, busy_lines, args.busy_seconds, args.client_processes)
            ),
            busy_lines,
        )
        print(f"load average: {os.getloadavg()}")
        clean = all(busy[k] == 0 and idle[k] == 0 for k in ("gaps", "duplicates", "missing", "unfinished"))
        ok = idle["p50_ms"] < IDLE_P50_MS and busy["p99_ms"] < BUSY_P99_MS and clean
        print(
            f"idle p50 {idle['p50_ms']} ms (target < {IDLE_P50_MS:.0f}); busy p99 {busy['p99_ms']} ms "
            f"(target < {BUSY_P99_MS:.0f}), {busy['p99_ms'] / idle['p99_ms']:.2f}x the idle p99; "
            f"gaps/duplicates/missing/unfinished all zero: {clean}"
        )
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    except Exception:
        if stack is not None:
            print(f"web log:\n{stack.tail('web')}\nworker log:\n{stack.tail('worker')}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            load_stack.stop(stack)
        from django.db import connections

        connections.close_all()
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
