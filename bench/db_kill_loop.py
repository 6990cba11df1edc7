"""Pooled connections killed under load: does the web server answer 503 while Postgres is up?

The production web process (uvicorn on Postgres, the psycopg pool, Redis as cache and broker)
serves a mixed loop of reads and launches from one token, while a killer thread terminates the
server's connections to the bench's own throwaway database with `pg_terminate_backend` at random
intervals (never its own control connection, never another database's backends). Postgres stays
up the whole time, so every `503 database_unavailable` counted is a spurious one: the pool handed
out a dead connection. Target: 0.

By default only backends idle for at least `--min-idle-ms` (100 ms) are killed: that is a
connection sitting in the pool (no request holds its connection idle between two statements that
long), and what such a connection meets in production (a restarted or terminated backend, an
idle timeout in a proxy or firewall). `--targets all` also kills backends mid-request and
mid-statement: a request that had already written is then not repeated (did its COMMIT land?), so
its 503 is the right answer; that mode reports 503s per method.

    python -m bench.db_kill_loop                  # 1 minute
    python -m bench.db_kill_loop --minutes 30     # the figure in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import load_stack
from bench.throwaway import PG, create_database, drop_database, setup_django

READ_PATHS = ("/api/v1/runs/", "/api/v1/runs/{id}/", "/api/v1/runs/{id}/logs/tail/", "/api/v1/runs/states/")
KILL_SQL = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
  AND (%(all)s OR (state = 'idle' AND now() - state_change >= make_interval(secs => %(idle_s)s)))
"""


@dataclass
class Tally:
    """What the clients saw and what the killer did; shared by the loop and the killer thread."""

    statuses: Counter[str] = field(default_factory=Counter)
    unavailable: Counter[str] = field(default_factory=Counter)  # 503 per method
    transport_errors: int = 0
    kill_rounds: int = 0
    backends_killed: int = 0
    postgres_down_seconds: float = 0.0
    run_ids: list[int] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def summary(self, seconds: float) -> dict[str, Any]:
        requests = sum(self.statuses.values())
        return {
            "seconds": round(seconds, 1),
            "requests": requests,
            "requests_per_s": round(requests / seconds, 1) if seconds else None,
            "statuses": dict(sorted(self.statuses.items())),
            "unavailable_503": sum(self.unavailable.values()),
            "unavailable_503_by_method": dict(self.unavailable),
            "transport_errors": self.transport_errors,
            "kill_rounds": self.kill_rounds,
            "backends_killed": self.backends_killed,
            "postgres_down_seconds": round(self.postgres_down_seconds, 1),
            "launches": len(self.run_ids),
            "samples": self.samples[:5],
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to loop (default 1)")
    parser.add_argument("--readers", type=int, default=3, help="concurrent read loops")
    parser.add_argument("--launchers", type=int, default=1, help="concurrent launch loops")
    parser.add_argument("--kill-min", type=float, default=0.2, help="shortest pause between kills (s)")
    parser.add_argument("--kill-max", type=float, default=2.0, help="longest pause between kills (s)")
    parser.add_argument("--targets", choices=["idle", "all"], default="idle", help="which backends to kill")
    parser.add_argument("--min-idle-ms", type=float, default=100, help="idle backends: idle this long")
    parser.add_argument("--seed", type=int, default=None, help="random seed (kill timing, read mix)")
    parser.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    parser.add_argument("--logs", type=Path, default=None, help="keep the web server's log in this folder")
    return parser.parse_args(argv)


def prepare_database() -> str:
    """A superuser's token; the bench's own Django connection is closed so only the server's
    connections are left for the killer to find."""
    from django.contrib.auth import get_user_model
    from django.db import connections

    from accounts.tokens import do_issue_token

    user = get_user_model().objects.create_superuser(
        "chaos", "chaos@example.invalid", secrets.token_urlsafe(24)
    )
    plaintext = do_issue_token(user, name="db kill loop").plaintext
    connections.close_all()
    return plaintext


def kill_loop(conninfo: str, args: argparse.Namespace, tally: Tally, stop: threading.Event) -> None:
    rng = random.Random(args.seed)
    with psycopg.connect(conninfo, autocommit=True) as control:
        while not stop.wait(rng.uniform(args.kill_min, args.kill_max)):
            started = time.monotonic()
            try:
                values = {"all": args.targets == "all", "idle_s": args.min_idle_ms / 1000}
                row = control.execute(KILL_SQL, values).fetchone()
            except psycopg.Error:
                # The control connection lost means Postgres itself is down: 503s then are real.
                tally.postgres_down_seconds += time.monotonic() - started
                raise
            tally.kill_rounds += 1
            tally.backends_killed += int(row[0]) if row else 0


async def request(
    client: httpx.AsyncClient, tally: Tally, method: str, url: str, **kwargs: Any
) -> httpx.Response | None:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TransportError as error:
        tally.transport_errors += 1
        tally.samples.append(f"{method} {url}: {error!r}")
        return None
    tally.statuses[f"{method} {response.status_code}"] += 1
    if response.status_code == 503:
        tally.unavailable[method] += 1
        tally.samples.append(f"{method} {url}: {response.text[:200]}")
    return response


async def launcher(client: httpx.AsyncClient, tally: Tally, deadline: float) -> None:
    body = {"name": "db-kill", "program": "loadgen", "params": {"lines": 1, "seconds": 0}}
    while time.monotonic() < deadline:
        response = await request(client, tally, "POST", "/api/v1/runs/", json=body)
        if response is not None and response.status_code == 201:
            tally.run_ids.append(int(response.json()["id"]))
        await asyncio.sleep(0.1)


async def reader(client: httpx.AsyncClient, tally: Tally, deadline: float, rng: random.Random) -> None:
    while time.monotonic() < deadline:
        path = rng.choice(READ_PATHS)
        run_id = rng.choice(tally.run_ids) if tally.run_ids else None
        if "{id}" in path and run_id is None:
            path = READ_PATHS[0]
        await request(client, tally, "GET", path.format(id=run_id))
        await asyncio.sleep(rng.uniform(0, 0.1))  # think time: pooled connections sit idle


async def drive(base_url: str, token: str, args: argparse.Namespace, tally: Tally) -> float:
    rng = random.Random(args.seed)
    started = time.monotonic()
    deadline = started + args.minutes * 60
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        loops = [launcher(client, tally, deadline) for _ in range(args.launchers)]
        loops += [reader(client, tally, deadline, random.Random(rng.random())) for _ in range(args.readers)]
        await asyncio.gather(*loops)
    return time.monotonic() - started


def start_web(queue: str, logs: Path) -> tuple[str, Any]:
    """Only the web process: launches queue up unread (no worker), which is all a launch needs."""
    port = load_stack.free_port()
    command = [sys.executable, "-m", "uvicorn", "controlplane.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--no-proxy-headers"]
    web = load_stack._spawn(command, load_stack.product_env(queue), logs / "web.log")
    return f"http://127.0.0.1:{port}", web


def measure(
    args: argparse.Namespace, db_name: str, data_dir: Path, queue: str, procs: list[Any]
) -> dict[str, Any]:
    setup_django(db_name, data_dir, redis=True)
    token = prepare_database()
    logs = args.logs or data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base_url, web = start_web(queue, logs)
    procs.append(web)
    stack = load_stack.Stack(base_url=base_url, ws_base="", web=web, worker=web, logs=logs)
    load_stack.wait_web_ready(stack, 90)
    tally = Tally()
    stop = threading.Event()
    conninfo = f"host={PG['host']} port={PG['port']} user={PG['user']} dbname={db_name}"
    killer = threading.Thread(target=kill_loop, args=(conninfo, args, tally, stop), daemon=True)
    killer.start()
    try:
        seconds = asyncio.run(drive(base_url, token, args, tally))
    finally:
        stop.set()
        killer.join(timeout=10)
    result = {"config": {k: str(v) for k, v in vars(args).items()}, **tally.summary(seconds)}
    result["web_alive"] = web.poll() is None
    if result["unavailable_503"]:
        result["web_log_tail"] = stack.tail("web", 1500)
    return result


def cleanup(db_name: str, created: bool, data_dir: Path, queue: str, procs: list[Any]) -> None:
    for process in procs:
        load_stack.stop_process(process, signal.SIGINT, 10)
    with contextlib.suppress(Exception):
        from django.db import connections

        connections.close_all()
    if created:
        with contextlib.suppress(Exception):
            drop_database(db_name)
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
        for key in client.scan_iter(match=f"*{queue}*"):  # the queue's name is ours alone
            client.delete(key)
        client.close()
    shutil.rmtree(data_dir, ignore_errors=True)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    db_name = f"bench_dbkill_{os.getpid()}_{secrets.token_hex(3)}"
    queue = f"bench-dbkill-{os.getpid()}-{secrets.token_hex(3)}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-dbkill-"))
    procs: list[Any] = []
    created = False
    try:
        create_database(db_name)
        created = True
        result = measure(args, db_name, data_dir, queue, procs)
    finally:
        cleanup(db_name, created, data_dir, queue, procs)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    result = run(argv)
    print(json.dumps(result, indent=2))
    return 0 if result["unavailable_503"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
