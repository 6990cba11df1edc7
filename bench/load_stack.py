"""The production topology for the load test: a uvicorn web server and a Celery worker.

Both are subprocesses in sessions of their own (a Ctrl-C at the terminal reaches only the load
test, which then stops them in order), with the environment of production: Postgres, Redis as
broker, channel layer and cache, JSON logs at INFO. The worker runs the threads pool with one
slot per launcher, like docker-compose.yml's worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PROGRAMS_FILE = REPO / "bench" / "load_programs.toml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    base_url: str
    ws_base: str
    web: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: Path

    def tail(self, name: str, chars: int = 2000) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def product_env(queue: str, programs_file: Path = PROGRAMS_FILE) -> dict[str, str]:
    """The product's environment: what `throwaway.setup_django` put in os.environ, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "CELERY_BROKER_URL": os.environ["REDIS_URL"],
            "CONTROLPLANE_PROGRAMS_FILE": str(programs_file),
            "CONTROLPLANE_DEFAULT_QUEUE": queue,
            # Production's defaults: the log lines a request costs are part of what is measured.
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "SECURE_COOKIES": "false",
            "PYTHONUNBUFFERED": "1",
            # Several one-thread programs on two cores; torch is not imported, but keep it sane.
            "OMP_NUM_THREADS": "1",
            # One user drives the whole load, which production's per-user rate limit (meant for
            # one client among many) would refuse: this measures capacity, not the limit.
            "CONTROLPLANE_THROTTLE_USER": "1000000/min",
        }
    )
    return env


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start(
    queue: str,
    slots: int,
    logs: Path,
    programs_file: Path = PROGRAMS_FILE,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    """`extra_env`: what a bench changes in both processes (the fleet's settings, say)."""
    # The fleet admits as many runs at once as the worker declares slots (no GPUs here): without
    # this, `slots` set only Celery's threads and the fleet ran one run at a time (a bench of "4
    # busy runs" ran them one after another, and the viewers of the last timed out).
    env = {**product_env(queue, programs_file), "CONTROLPLANE_WORKER_SLOTS": str(slots), **(extra_env or {})}
    port = free_port()
    web = _spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "controlplane.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--no-proxy-headers",  # as in production (docker-compose.yml)
        ],
        env,
        logs / "web.log",
    )
    try:
        worker = _spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane",
                "worker",
                "-Q",
                queue,
                "--pool",
                "threads",
                "--concurrency",
                str(slots),
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"{queue}@%h",
            ],
            env,
            logs / "worker.log",
        )
    except BaseException:
        stop_process(web, signal.SIGINT, 10)
        raise
    base_url = f"http://127.0.0.1:{port}"
    return Stack(base_url=base_url, ws_base=f"ws://127.0.0.1:{port}", web=web, worker=worker, logs=logs)


def wait_web_ready(stack: Stack, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if stack.web.poll() is not None:
            raise RuntimeError(f"the web server exited with {stack.web.returncode}: {stack.tail('web', 600)}")
        try:
            if httpx.get(f"{stack.base_url}/healthz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the web server was not ready after {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], sig: int, grace: float) -> None:
    """Signal the process and wait; past the grace, kill its whole process group."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(sig)
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    # Not reaped yet, so the group id (its pid: it leads its own session) is still ours.
    # Training programs are not in it: their guardians end them once the worker is gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop(stack: Stack) -> None:
    # The worker first: a warm shutdown stops its programs (their guardians end the groups).
    stop_process(stack.worker, signal.SIGTERM, 30)
    stop_process(stack.web, signal.SIGINT, 10)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (from /proc; None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, to tell how loaded the machine was in a window."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)
