"""Fixtures: personas, an API client, and a real stack (uvicorn + Celery worker) for end-to-end tests.

The stack runs as subprocesses against the test database that pytest-django creates, the local
Redis and a temporary data directory, exactly as production runs them: nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import CommandError
from django.core.management.commands import flush
from rest_framework.test import APIClient

from accounts.models import UserRole
from accounts.tokens import do_issue_token

# The quarantine marker's hooks (docs/ci.md#flaky-tests); a conftest picks up imported hooks.
from tests.quarantine import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)

# The suite's halves (./dev coverage runs them side by side).
pytest_plugins = ["tests.shards"]

ROOT = Path(__file__).resolve().parent.parent
logging.getLogger("httpx").setLevel(logging.WARNING)
PASSWORD = "correct-horse-battery-staple-42"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds nothing but its process-table entry)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def make_user(username: str, role: str = "operator") -> User:
    """A user with a role, the way the product makes them (Django flags follow the role)."""
    user = get_user_model().objects.create_user(username, f"{username}@example.com", PASSWORD)
    UserRole.objects.update_or_create(user=user, defaults={"role": role})
    if role == "admin":
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    return user


@pytest.fixture(autouse=True)
def _audit_anchors_of_this_test(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test's database starts without checkpoints, so each gets an audit anchor file of its
    own: an anchor left by an earlier test would name checkpoints this database never had."""
    settings.AUDIT_ANCHORS = [f"file://{tmp_path_factory.mktemp('anchors') / 'audit-anchors.jsonl'}"]


@pytest.fixture
def owner(db: Any) -> User:
    return make_user("olivia", "operator")


@pytest.fixture
def teammate(db: Any) -> User:
    return make_user("tomas", "operator")


@pytest.fixture
def api(owner: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(owner).plaintext}")
    return client


@pytest.fixture
def anonymous_api() -> APIClient:
    return APIClient()


# -- the real stack -------------------------------------------------------------------------


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    data_dir: Path
    web: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: Path

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def ws_url(self, path: str) -> str:
        return self.base_url.replace("http://", "ws://") + path


def process_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a product process started by a test (web, worker, standalone)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "CONTROLPLANE_DATA_DIR": str(data_dir),
            "CONTROLPLANE_PROGRAMS_FILE": str(ROOT / "tests" / "fixtures" / "programs.toml"),
            "CONTROLPLANE_CANCEL_GRACE_SECONDS": "3",
            "LOG_FORMAT": "json",
            # Test stacks serve plain http on loopback, like a developer's machine.
            "SECURE_COOKIES": "false",
            "PYTHONUNBUFFERED": "1",
            # Tiny models train faster with one thread on a 2-core machine running web + worker.
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(overrides)
    return env


def _flush_retrying_deadlocks() -> None:
    """A transactional test's teardown TRUNCATEs every table at once; a live worker of the session
    stack (its heartbeat, the fleet agent, the sampler) may hold one of those locks and wait for
    another, and Postgres then picks the flush as the deadlock's victim (seen in CI). Try again,
    as the worker's own side of that deadlock does."""
    original = flush.Command.handle

    def handle(self: flush.Command, *args: Any, **options: Any) -> Any:
        for attempt in range(1, 4):
            try:
                return original(self, *args, **options)
            except CommandError as error:
                if attempt == 3 or "deadlock detected" not in str(error.__cause__):
                    raise
                time.sleep(0.5 * attempt)
        return None

    flush.Command.handle = handle  # type: ignore[method-assign]


_flush_retrying_deadlocks()


def celery_worker_command(
    queues: str, name: str, *, concurrency: int = 2, extra: tuple[str, ...] = ()
) -> list[str]:
    """The worker command the tests start: compose's worker (threads pool), on the given queues."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "controlplane",
        "worker",
        "-Q",
        queues,
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        *extra,
        "--without-mingle",
        "--without-gossip",
        "-n",
        name,
    ]


def stack_env(data_dir: Path) -> dict[str, str]:
    db = settings.DATABASES["default"]
    return process_env(
        data_dir,
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        SECRET_KEY=settings.SECRET_KEY,
        CONTROLPLANE_HEARTBEAT_SECONDS="2",
    )


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def stack(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack-data")
    logs = tmp_path_factory.mktemp("stack-logs")
    env = stack_env(data_dir)
    # A fresh queue: messages left by earlier sessions must not start runs of this one.
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "controlplane", "purge", "-f", "-Q", "training,housekeeping"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    port = free_port()
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "controlplane.asgi:application",
            "--port",
            str(port),
            "--no-access-log",
            "--no-proxy-headers",  # as in production: the app decides which proxies to believe
        ],
        cwd=ROOT,
        env=env,
        stdout=(logs / "web.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        celery_worker_command("training,housekeeping", f"test-{port}@%h"),
        cwd=ROOT,
        env=env,
        stdout=(logs / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base_url), 30, message="the web server")
        wait_for(lambda: b"ready" in (logs / "worker.log").read_bytes(), 60, message="the worker")
        yield Stack(base_url=base_url, env=env, data_dir=data_dir, web=web, worker=worker, logs=logs)
    finally:
        _stop(worker)
        _stop(web)


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def live_owner(stack: Stack, transactional_db: Any) -> tuple[User, str]:
    user = make_user("olivia", "operator")
    return user, do_issue_token(user).plaintext


@pytest.fixture
def live_api(stack: Stack, live_owner: tuple[User, str]) -> Iterator[httpx.Client]:
    with stack.client(live_owner[1]) as client:
        yield client


def wait_for_status(
    client: httpx.Client, run_id: int, statuses: set[str], timeout: float = 120
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/api/v1/runs/{run_id}/").json()
        return run if run["status"] in statuses else None

    return wait_for(check, timeout, interval=0.3, message=f"run {run_id} to reach {statuses}")  # type: ignore[no-any-return]


TINY_TINYGPT = {
    "steps": 12,
    "batch_size": 4,
    "seq_len": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "eval_every": 6,
    "checkpoint_every": 6,
    "warmup_steps": 2,
}


def train_reference_tinygpt(run_dir: Path, params: dict[str, Any]) -> str:
    """Train tinygpt once without interruption, outside the control plane (one thread, as the
    runs it is compared with); the sha256 of its model.safetensors."""
    (run_dir / "params.json").write_text(json.dumps(params))
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "CONTROLPLANE_PARAMS": str(run_dir / "params.json"),
        "CONTROLPLANE_RUN_DIR": str(run_dir),
    }
    subprocess.run(
        [sys.executable, "-m", "workers.programs.tinygpt"],
        cwd=run_dir,
        env=env,
        check=True,
        capture_output=True,
    )
    return hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()
