"""The fault-injection harness: a private Postgres cluster and Redis server (so stopping them
hurts no other test), and the production processes (uvicorn, a training worker, a housekeeping
worker with beat) started, killed and restarted by the tests.

Timings are shortened through the same environment variables operators use (lease 6 s,
heartbeat 1 s, reconcile every 1 s) so each fault resolves in seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import (
    ROOT,
    celery_worker_command,
    free_port,
    process_env,
    train_reference_tinygpt,
    wait_for,
)


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
    if not versions:
        pytest.skip("the chaos suite needs the PostgreSQL server binaries (Debian: postgresql)")
    return versions[-1]


SUMMARY = ROOT / "test-output" / "chaos-summary.json"
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}

# Small enough to train in seconds on two cores, long enough to be hit mid-run.
CHAOS_TINYGPT = {
    "steps": 2400,
    "batch_size": 4,
    "seq_len": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "eval_every": 400,
    "checkpoint_every": 200,
    "warmup_steps": 10,
    "device": "cpu",
}


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


class PrivatePostgres:
    def __init__(self) -> None:
        self.bin = _postgres_bin()
        # Outside pytest's private (0700, root) temp dirs: the server runs as the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix="cp-chaos-pg-"))
        self.data = self.root / "pgdata"
        self.sockets = self.root / "pgsock"
        self.port = free_port()
        for path in (self.root, self.data, self.sockets):
            path.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(path, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            ),
            check=True,
            capture_output=True,
        )
        self.start()
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute("CREATE DATABASE chaos")

    def dsn(self, database: str = "chaos") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.data / "server.log"),
                "-o",
                f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"),
            check=False,
            capture_output=True,
        )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: (
                subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode
                == 0
            ),
            10,
            message="redis",
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class ChaosStack:
    root: Path
    postgres: PrivatePostgres
    redis: PrivateRedis
    env: dict[str, str]
    base_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    stopped_on_purpose: set[str] = field(default_factory=set)
    restarts: dict[str, int] = field(default_factory=dict)
    token: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()
        threading.Thread(target=self._restart_policy, daemon=True).start()

    def _restart_policy(self) -> None:
        """Like `restart: unless-stopped` (compose) or a Deployment (Kubernetes): a process that
        exits by itself is started again. Celery workers do exit on some broker faults."""
        while not self._closing.wait(0.5):
            with self._lock:
                for name, process in list(self.processes.items()):
                    if process.poll() is not None and name not in self.stopped_on_purpose:
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        self._spawn(name, self.commands[name])

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        env = env or self.envs.get(name) or self.env
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        self.commands[name] = command
        self.envs[name] = env
        self.stopped_on_purpose.discard(name)
        return process

    def start_web(self) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self._spawn(
            "web",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "controlplane.asgi:application",
                "--port",
                str(port),
                "--no-access-log",
            ],
        )
        wait_for(self._healthy, 30, message="web")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, name: str = "worker", **env: str) -> subprocess.Popen[bytes]:
        """A training worker; `env` overrides the stack's variables (its own data directory)."""
        before = self.log(name).count("ready.")
        process = self._spawn(
            name,
            celery_worker_command("training", f"{name}-{time.monotonic_ns()}@%h"),
            {**self.env, **env} if env else None,
        )
        wait_for(lambda: self.log(name).count("ready.") > before, 60, message=f"{name} ready")
        return process

    def start_housekeeping(self) -> None:
        self._spawn(
            "housekeeping",
            celery_worker_command(
                "housekeeping",
                "housekeeping@%h",
                concurrency=1,
                extra=("-B", "--schedule", str(self.root / "beat-schedule")),
            ),
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        with self._lock:
            self.stopped_on_purpose.add(name)
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.postgres.dsn(), autocommit=True, connect_timeout=5) as connection:
            return connection.execute(query, args).fetchall()

    def launch(self, params: dict[str, Any], program: str = "tinygpt", **fields: Any) -> int:
        with self.api() as api:
            response = api.post(
                "/api/v1/runs/", json={"name": "chaos", "program": program, "params": params, **fields}
            )
            assert response.status_code == 201, response.text
            return int(response.json()["id"])

    def run(self, run_id: int) -> dict[str, Any]:
        rows = self.sql(
            "SELECT status, attempt, error_kind, error_code, error_message FROM runs_run WHERE id = %s",
            run_id,
        )
        status, attempt, kind, code, message = rows[0]
        return {
            "status": status,
            "attempt": attempt,
            "error_kind": kind,
            "error_code": code,
            "error_message": message,
        }

    def wait_status(self, run_id: int, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                run = self.run(run_id)
            except psycopg.OperationalError:
                return None
            return run if run["status"] in statuses else None

        return wait_for(check, timeout, interval=0.25, message=f"run {run_id} to reach {statuses}")  # type: ignore[no-any-return]

    def wait_progress(self, run_id: int, at_least: int, timeout: float = 120) -> None:
        wait_for(
            lambda: (
                (self.sql("SELECT progress_step FROM runs_run WHERE id = %s", run_id)[0][0] or 0) >= at_least
            ),
            timeout,
            interval=0.1,
            message=f"run {run_id} to pass step {at_least}",
        )

    def attempt_running(self, run_id: int, attempt: int) -> bool:
        run = self.run(run_id)
        return bool(run["attempt"] == attempt and run["status"] == "running")

    def model_sha256(self, run_id: int) -> str | None:
        rows = self.sql(
            "SELECT sha256 FROM runs_artifact WHERE run_id = %s AND name = 'model.safetensors'", run_id
        )
        return rows[0][0] if rows else None

    def check_invariants(self, run_id: int) -> None:
        run = self.run(run_id)
        assert run["status"] in TERMINAL, run
        seqs = [
            row[0] for row in self.sql("SELECT seq FROM runs_logline WHERE run_id = %s ORDER BY seq", run_id)
        ]
        assert seqs == list(range(1, len(seqs) + 1)), "log seq must be contiguous with no duplicate"
        duplicates = self.sql(
            "SELECT s.key, p.step, count(*) FROM runs_metricpoint p JOIN runs_metricseries s ON s.id = p.series_id "
            "WHERE s.run_id = %s GROUP BY 1, 2 HAVING count(*) > 1",
            run_id,
        )
        assert duplicates == []
        overlapping = self.sql(
            "SELECT a.number, b.number FROM runs_runattempt a JOIN runs_runattempt b ON a.run_id = b.run_id "
            "AND a.number < b.number WHERE a.run_id = %s AND (a.finished_at IS NULL OR a.finished_at > b.started_at) "
            "AND a.status <> 'lost'",
            run_id,
        )
        assert overlapping == [], "an attempt started while an earlier one was still live"

    def stop(self) -> None:
        self._closing.set()
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)

    def teardown(self) -> None:
        self.stop()
        self.redis.stop()
        self.postgres.destroy()


class ProgramWatch:
    """Samples /proc for the training programs of one run: the real "at most one live attempt"."""

    def __init__(self, stack: ChaosStack, run_id: int) -> None:
        # The run directory, not just the id: other stacks on this machine have a run 1 too.
        self.marker = f"CONTROLPLANE_RUN_DIR={stack.root / 'data' / 'runs' / str(run_id)}".encode()
        self.max_alive = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def alive(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                command = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().split(") ", 1)[1][0]
            except OSError:
                continue
            if self.marker in environ.split(b"\0") and b"workers.guardian" not in command and state != "Z":
                found.append(int(entry.name))
        return found

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.max_alive = max(self.max_alive, len(self.alive()))
            self.samples += 1
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.max_alive


def record(scenario: str, **figures: Any) -> None:
    """Append a scenario's measured figures to test-output/chaos-summary.json (for docs)."""
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
    data[scenario] = figures
    SUMMARY.write_text(json.dumps(data, indent=2, sort_keys=True))


def _make_admin_token(env: dict[str, str]) -> str:
    script = (
        "from django.contrib.auth.models import User; from accounts.tokens import do_issue_token;"
        "u = User.objects.create_superuser('chaos', 'chaos@example.com', 'x-chaos-password-123');"
        "print(do_issue_token(u).plaintext)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sha256 of CHAOS_TINYGPT trained once without interruption, outside the control plane."""
    return train_reference_tinygpt(tmp_path_factory.mktemp("reference"), CHAOS_TINYGPT)


def make_stack(tmp_path: Path, **overrides: str) -> ChaosStack:
    postgres = PrivatePostgres()
    redis = PrivateRedis(tmp_path)
    env = process_env(
        tmp_path / "data",
        DATABASE_URL=postgres.dsn(),
        REDIS_URL=redis.url,
        CELERY_BROKER_URL=redis.url + "/1",
        SECRET_KEY="chaos-secret-key-that-is-long-enough-0123456789",
        CONTROLPLANE_HEARTBEAT_SECONDS="1",
        CONTROLPLANE_LEASE_SECONDS="6",
        CONTROLPLANE_RECONCILE_SECONDS="1",
        CONTROLPLANE_REDISPATCH_AFTER_SECONDS="3",
        CONTROLPLANE_RETRY_BASE_SECONDS="0.5",
        CONTROLPLANE_RETRY_MAX_SECONDS="2",
        DATABASE_POOL_TIMEOUT="2",
    )
    env.update(overrides)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    stack = ChaosStack(root=tmp_path, postgres=postgres, redis=redis, env=env)
    stack.token = _make_admin_token(env)
    return stack


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[ChaosStack]:
    stack = make_stack(tmp_path)
    try:
        stack.start_web()
        stack.start_housekeeping()
        stack.start_worker()
        yield stack
    finally:
        stack.teardown()
