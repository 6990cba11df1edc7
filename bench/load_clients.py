"""The load test's actors: launchers, API readers, websocket viewers and two probes.

All of them share one event loop and one HTTP connection pool in the load test's process, except
the Postgres probe, which has a thread of its own so its figure does not depend on how busy the
loop is. Each records into `Shared.recorder`, which the driver swaps between phases.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import psycopg
from websockets.asyncio.client import connect

from bench.load_stats import OpStats, Recorder, RunBook, SocketStats, Viewing

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "dead"})
PROGRAM = "loadgen"
# After a run's terminal status frame, a viewer waits this long for late frames before closing.
QUIET_AFTER_TERMINAL = 2.0
# A viewer of a live run that receives nothing for SILENCE seconds asks the API whether the run
# ended (then its terminal status frame was missed); after STALL seconds it gives up (a stall).
SILENCE_SECONDS = 5.0
STALL_SECONDS = 30.0
HEALTHZ_EVERY = 0.05
PG_PROBE_EVERY = 0.01
POLL_EVERY = 0.5
_EMITTED = re.compile(r"emitted=(\d+\.\d+)")


@dataclass(frozen=True)
class SeedRun:
    run_id: int
    lines: int


@dataclass
class Shared:
    recorder: Recorder
    seeds: list[SeedRun] = field(default_factory=list)
    # Runs launched and not yet seen finished: what viewers pick from.
    live_runs: set[int] = field(default_factory=set)
    runs: RunBook = field(default_factory=RunBook)
    sockets: SocketStats = field(default_factory=SocketStats)
    # Set at the end of a phase's window: readers and probes stop, launchers launch no more.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when launchers have drained: viewers finish what they watch and stop.
    launchers_done: asyncio.Event = field(default_factory=asyncio.Event)
    run_params: dict[str, Any] = field(default_factory=dict)
    run_timeout: float = 120.0


async def timed(
    client: httpx.AsyncClient,
    stats: OpStats,
    method: str,
    url: str,
    expect: int = 200,
    **kwargs: Any,
) -> httpx.Response | None:
    """One request: its latency into `stats` when it answers `expect`, an error otherwise."""
    started = time.perf_counter()
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as error:
        stats.error(f"{method} {url}: {error.__class__.__name__}: {error}")
        return None
    elapsed = time.perf_counter() - started
    if response.status_code != expect:
        stats.error(f"{method} {url}: HTTP {response.status_code}: {response.text[:200]}")
        return None
    stats.ok(elapsed)
    return response


# -- launches ---------------------------------------------------------------------------------


async def launch(client: httpx.AsyncClient, shared: Shared, name: str, params: dict[str, Any]) -> int | None:
    response = await timed(
        client,
        shared.recorder.op("launch"),
        "POST",
        "/api/v1/runs/",
        expect=201,
        json={"name": name, "program": PROGRAM, "params": params},
    )
    if response is None:
        return None
    run_id = response.json().get("id")
    if not isinstance(run_id, int):
        shared.recorder.op("launch").error(f"launch answered without an id: {response.text[:200]}")
        return None
    return run_id


async def wait_finished(client: httpx.AsyncClient, shared: Shared, run_id: int) -> str | None:
    """Poll the run until it is terminal; its status, or None past the run timeout."""
    deadline = time.monotonic() + shared.run_timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_EVERY)
        response = await timed(client, shared.recorder.op("run_poll"), "GET", f"/api/v1/runs/{run_id}/")
        if response is not None:
            status = response.json().get("status")
            if status in TERMINAL:
                return str(status)
    return None


async def launcher(client: httpx.AsyncClient, shared: Shared, number: int) -> None:
    """Launch, wait for the run to finish, launch again: at most one run in flight each."""
    launches = 0
    while not shared.stop.is_set():
        launches += 1
        run_id = await launch(client, shared, f"load-{number}-{launches}", shared.run_params)
        if run_id is None:
            await asyncio.sleep(0.5)
            continue
        shared.runs.launched.append(run_id)
        shared.live_runs.add(run_id)
        try:
            status = await wait_finished(client, shared, run_id)
        finally:
            shared.live_runs.discard(run_id)
        if status is not None:
            shared.runs.seen_terminal[run_id] = status


# -- readers ----------------------------------------------------------------------------------

READS = ("runs_list", "run_detail", "logs_after", "metrics")


async def read_once(client: httpx.AsyncClient, shared: Shared, what: str, rng: random.Random) -> None:
    seed = rng.choice(shared.seeds)
    stats = shared.recorder.op(what)
    if what == "runs_list":
        response = await timed(client, stats, "GET", "/api/v1/runs/?page_size=50")
        if response is not None and not response.json().get("results"):
            stats.error("runs list came back empty")
    elif what == "run_detail":
        response = await timed(client, stats, "GET", f"/api/v1/runs/{seed.run_id}/")
        if response is not None and response.json().get("id") != seed.run_id:
            stats.error(f"run detail answered another run: {response.text[:200]}")
    elif what == "logs_after":
        after = rng.randrange(seed.lines)
        url = f"/api/v1/runs/{seed.run_id}/logs/?after={after}&limit=100"
        response = await timed(client, stats, "GET", url)
        if response is not None:
            results = response.json().get("results") or [{}]
            # A correctness check under load: "after N" starts at N + 1, always.
            if results[0].get("seq") != after + 1:
                stats.error(f"logs after {after} began at {results[0].get('seq')}")
    else:
        response = await timed(client, stats, "GET", f"/api/v1/runs/{seed.run_id}/metrics/?key=train/loss")
        if response is not None and not response.json().get("points"):
            stats.error("metrics came back without points")


async def reader(client: httpx.AsyncClient, shared: Shared, number: int) -> None:
    """Closed loop over the same mix in every phase (round robin, so the mix never drifts)."""
    rng = random.Random(number)
    turn = number
    while not shared.stop.is_set():
        await read_once(client, shared, READS[turn % len(READS)], rng)
        turn += 1


async def healthz_probe(client: httpx.AsyncClient, shared: Shared) -> None:
    """Open loop (a fixed pace, not as fast as possible): the server's latency for a trivial request."""
    while not shared.stop.is_set():
        started = time.monotonic()
        await timed(client, shared.recorder.op("healthz"), "GET", "/healthz")
        await asyncio.sleep(max(0.0, HEALTHZ_EVERY - (time.monotonic() - started)))


class PostgresProbe(threading.Thread):
    """`SELECT 1` on a raw psycopg connection: how slow the machine and Postgres are right now."""

    def __init__(self, conninfo: str, shared: Shared) -> None:
        super().__init__(name="pg-probe", daemon=True)
        self.conninfo = conninfo
        self.shared = shared
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                while not self.halt.is_set():
                    stats = self.shared.recorder.op("pg_select1")
                    started = time.perf_counter()
                    try:
                        conn.execute("SELECT 1").fetchone()
                    except psycopg.Error as error:
                        stats.error(f"SELECT 1: {error}")
                        return
                    stats.ok(time.perf_counter() - started)
                    self.halt.wait(PG_PROBE_EVERY)
        except psycopg.Error as error:
            self.shared.recorder.op("pg_select1").error(f"connect: {error}")


# -- websocket viewers ------------------------------------------------------------------------


def _take_lines(sockets: SocketStats, lines: list[dict[str, Any]], last: int, opened: float) -> int:
    received = time.time()
    for line in lines:
        seq = int(line["seq"])
        sockets.lines += 1
        if seq <= last:
            sockets.duplicates += 1
            continue
        if seq > last + 1:
            sockets.gaps += 1
            sockets.gap_lines += seq - last - 1
        last = seq
        stamped = datetime.fromisoformat(line["ts"]).timestamp()
        if stamped >= opened:
            sockets.delivery.append(received - stamped)
            emitted = _EMITTED.search(line.get("line", ""))
            if emitted:
                sockets.print_to_receipt.append(received - float(emitted.group(1)))
    return last


async def _status(client: httpx.AsyncClient, run_id: int) -> str | None:
    try:
        return str((await client.get(f"/api/v1/runs/{run_id}/")).json().get("status"))
    except (httpx.HTTPError, ValueError):
        return None


async def watch(client: httpx.AsyncClient, ws_base: str, token: str, shared: Shared, run_id: int) -> None:
    """One viewing: open at seq 0, count every line, close once the run ended and went quiet."""
    sockets = shared.sockets
    try:
        socket = await connect(
            f"{ws_base}/ws/runs/{run_id}/?after=0",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=15,
            max_size=2**24,
        )
    except Exception as error:  # refused, rejected (InvalidStatus), timed out: each one is counted
        sockets.connect_errors += 1
        sockets.error(f"connect to run {run_id}: {error.__class__.__name__}: {error}")
        return
    sockets.connections += 1
    opened = time.time()
    last = 0
    terminal = False
    first_status: str | None = None
    heard = time.monotonic()
    try:
        while True:
            try:
                message = await asyncio.wait_for(
                    socket.recv(), timeout=QUIET_AFTER_TERMINAL if terminal else SILENCE_SECONDS
                )
            except TimeoutError:
                if terminal:
                    break
                silent = time.monotonic() - heard
                status = await _status(client, run_id)
                if status in TERMINAL:
                    sockets.error(
                        f"run {run_id} is {status} in the database, but its socket got no terminal "
                        f"status frame ({silent:.0f} s silent at seq {last})"
                    )
                    break
                if silent >= STALL_SECONDS:
                    sockets.stalls += 1
                    sockets.error(f"run {run_id} ({status}): no frame for {silent:.0f} s at seq {last}")
                    break
                continue
            heard = time.monotonic()
            frame = json.loads(message)
            sockets.frames += 1
            if frame.get("type") == "log":
                sockets.log_frames += 1
                last = _take_lines(sockets, frame["lines"], last, opened)
            elif frame.get("type") == "status":
                first_status = first_status or str(frame.get("status"))
                terminal = terminal or frame.get("status") in TERMINAL
    except Exception as error:  # a dropped connection is counted, then the viewer moves on
        sockets.error(f"run {run_id}: {error.__class__.__name__}: {error}")
    finally:
        await socket.close()
    sockets.viewings.append(
        Viewing(run_id=run_id, last_seq=last, saw_terminal=terminal, opened=opened, first_status=first_status)
    )


async def viewer(client: httpx.AsyncClient, ws_base: str, token: str, shared: Shared, number: int) -> None:
    """Watch a live run to its end, then another, until the launchers are done."""
    rng = random.Random(1000 + number)
    while not shared.launchers_done.is_set():
        if not shared.live_runs:
            await asyncio.sleep(0.05)
            continue
        await watch(client, ws_base, token, shared, rng.choice(sorted(shared.live_runs)))
