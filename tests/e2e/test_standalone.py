"""The README's first command: `manage.py standalone` on embedded defaults, driven over HTTP."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT, TINY_TINYGPT, free_port, process_alive, process_env, wait_for

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def standalone_env(data_dir: Path) -> dict[str, str]:
    """Embedded defaults: none of the production services' variables."""
    env = process_env(data_dir, CONTROLPLANE_AUDIT_CHECKPOINT_SECONDS="10")
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "SECRET_KEY",
        "DJANGO_SETTINGS_MODULE",
        "CONTROLPLANE_SECRETS_KEY",
        "CONTROLPLANE_AUDIT_KEY",
    ):
        env.pop(name, None)
    return env


def test_standalone_trains_a_model_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "standalone.log"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "standalone", "--port", str(port)],
        cwd=ROOT,
        env=standalone_env(tmp_path / "data"),
        stdout=output.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        password = wait_for(
            lambda: re.search(r"with password (\S+)", output.read_text()), 60, message="startup"
        )
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(base), 30, message="the server")
        token = httpx.post(
            f"{base}/api/v1/auth/token/", json={"username": "admin", "password": password.group(1)}
        )
        api = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token.json()['token']}"}, timeout=30
        )
        assert (tmp_path / "data" / "controlplane.sqlite3").exists()

        run = api.post(
            "/api/v1/runs/", json={"name": "sa", "program": "tinygpt", "params": TINY_TINYGPT}
        ).json()
        with connect(
            f"ws://127.0.0.1:{port}/ws/runs/{run['id']}/",
            additional_headers={"Authorization": api.headers["Authorization"]},
        ) as socket:
            frames: list[dict[str, object]] = []
            while not (frames and frames[-1]["type"] == "status" and frames[-1]["status"] in TERMINAL):
                frames.append(json.loads(socket.recv(timeout=120)))
        assert frames[-1]["status"] == "succeeded"
        assert any(frame["type"] == "log" for frame in frames)
        assert any(frame["type"] == "metric" for frame in frames)
        artifact = api.get(f"/api/v1/runs/{run['id']}/artifacts/").json()[0]
        body = api.get(artifact["download_url"]).content
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
        # Identity works on embedded defaults too: a secrets key and an audit key are generated
        # into the data directory, and the embedded beat signs the audit chain.
        secret = api.post("/api/v1/secrets/", json={"name": "SA_TOKEN", "value": "standalone-secret-1"})
        assert secret.status_code == 201, secret.text
        verified = wait_for(
            lambda: (body := api.get("/api/v1/audit/verify/").json())["checkpoints_checked"] and body,
            40,
            message="a signed audit checkpoint",
        )
        assert verified["ok"] is True
        for key_file in ("secrets.key", "audit_key"):
            assert oct((tmp_path / "data" / key_file).stat().st_mode & 0o777) == "0o600", key_file

        # A long run in flight when Ctrl-C arrives: its process must end with the server.
        long_run = api.post(
            "/api/v1/runs/",
            json={"name": "long", "program": "scripted", "params": {"mode": "sleep", "sleep": 600}},
        ).json()
        pid_file = tmp_path / "data" / "runs" / str(long_run["id"]) / "program.pid"
        wait_for(pid_file.exists, 30, message="the long program")
        wait_for(lambda: pid_file.read_text().strip(), 5, message="its pid")
        pid = int(pid_file.read_text())
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 20
        assert not process_alive(pid)
        assert "Stopped." in output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # The run interrupted by the shutdown is queued again (an infrastructure failure is
    # transient), not left "running".
    restarted = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='controlplane.settings'; django.setup();"
                f"from runs.models import Run; r=Run.objects.get(pk={long_run['id']}); print(r.status, r.error_kind)"
            ),
        ],
        cwd=ROOT,
        env=standalone_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert restarted.stdout.split()[-2:] == ["queued", "infrastructure"]


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
