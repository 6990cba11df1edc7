"""MLflow, the peer of bench/peer_mlflow.py: installed into a virtualenv of its own, served on Postgres.

The virtualenv lives under a cache directory (``$BENCH_CACHE_DIR``, default
``~/.cache/controlplane-bench/mlflow-<version>``) and is made once with ``pip install
mlflow==<version> psycopg2-binary==<version>`` from PyPI; later runs reuse it. The server is
``mlflow server`` with a Postgres backend store (a throwaway database of its own) and proxied
artifacts (``--serve-artifacts``) in a temp directory: the setup its docs give for a team server.
Everything here speaks MLflow's REST API (what its Python client sends), with httpx.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.throwaway import PG

MLFLOW_VERSION = "3.17.2"
PSYCOPG2_VERSION = "2.9.10"
BATCH = 1_000  # MLflow's limit of metrics in one log-batch request


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "controlplane-bench"
    return Path(os.environ.get("BENCH_CACHE_DIR", default)) / f"mlflow-{MLFLOW_VERSION}"


def ensure_installed() -> Path:
    """The `mlflow` executable of the cached virtualenv, installing it the first time."""
    venv = cache_dir()
    executable = venv / "bin" / "mlflow"
    if executable.is_file():
        return executable
    print(f"installing mlflow=={MLFLOW_VERSION} into {venv} (once; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            f"mlflow=={MLFLOW_VERSION}",
            f"psycopg2-binary=={PSYCOPG2_VERSION}",
        ],
        check=True,
    )
    return executable


def start(executable: Path, db_name: str, artifacts: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        str(executable),
        "server",
        "--backend-store-uri",
        f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db_name}",
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    with log.open("wb") as log_file:
        return subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(base: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            raise RuntimeError(
                f"mlflow exited with {server.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(
        f"mlflow was not ready after {timeout:.0f} s: {log.read_text(errors='replace')[-2000:]}"
    )


class Client:
    """The few REST calls the bench makes (`/api/2.0/mlflow/...`), on one keep-alive connection."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=httpx.Timeout(300.0))

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, f"/api/2.0/mlflow/{path}", **kwargs)
        response.raise_for_status()
        return dict(response.json())

    def new_run(self, experiment: str) -> tuple[str, str]:
        experiment_id = self.call("POST", "experiments/create", json={"name": experiment})["experiment_id"]
        run = self.call("POST", "runs/create", json={"experiment_id": experiment_id, "start_time": _now_ms()})
        return experiment_id, run["run"]["info"]["run_id"]

    def log_points(self, run_id: str, steps: int, keys: int) -> None:
        """Every (step, key) point as `log-batch` requests of 1,000 metrics, as the client sends them."""
        names = [f"k{i:02d}" for i in range(keys)]
        batch: list[dict[str, Any]] = []
        for step in range(steps):
            stamp = _now_ms()
            for name in names:
                batch.append({"key": name, "value": float(step % 997), "timestamp": stamp, "step": step})
                if len(batch) == BATCH:
                    self.call("POST", "runs/log-batch", json={"run_id": run_id, "metrics": batch})
                    batch = []
        if batch:
            self.call("POST", "runs/log-batch", json={"run_id": run_id, "metrics": batch})

    def finish(self, run_id: str) -> None:
        self.call("POST", "runs/update", json={"run_id": run_id, "status": "FINISHED", "end_time": _now_ms()})

    def history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        """The whole series through `metrics/get-history`, following `next_page_token`."""
        points: list[dict[str, Any]] = []
        params: dict[str, Any] = {"run_id": run_id, "metric_key": key}
        while True:
            answer = self.call("GET", "metrics/get-history", params=params)
            points.extend(answer.get("metrics", []))
            token = answer.get("next_page_token")
            if not token:
                return points
            params["page_token"] = token

    def upload(self, experiment_id: str, run_id: str, name: str, path: Path) -> str:
        """PUT through the tracking server's artifact proxy; returns the path to GET it back."""
        relative = f"{experiment_id}/{run_id}/artifacts/{name}"
        with path.open("rb") as handle:
            response = self.http.put(f"/api/2.0/mlflow-artifacts/artifacts/{relative}", content=handle)
        response.raise_for_status()
        return f"/api/2.0/mlflow-artifacts/artifacts/{relative}"


def stored_points(db_name: str, run_id: str) -> int:
    with psycopg.connect(dbname=db_name, **PG) as conn:
        row = conn.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run_id,)).fetchone()
        return int(row[0]) if row else 0


def copy_series(db_name: str, run_id: str, key: str, values: list[float]) -> None:
    """Seed a long series straight into MLflow's tables (what log-batch would leave there)."""
    stamp = _now_ms()
    buffer = io.StringIO()
    for step, value in enumerate(values):
        buffer.write(f"{key}\t{value}\t{stamp + step}\t{run_id}\t{step}\tfalse\n")
    last = len(values) - 1
    with psycopg.connect(dbname=db_name, **PG) as conn, conn.cursor() as cursor:
        with cursor.copy("COPY metrics (key, value, timestamp, run_uuid, step, is_nan) FROM STDIN") as copy:
            copy.write(buffer.getvalue())
        cursor.execute(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            "VALUES (%s, %s, %s, %s, false, %s)",
            (key, values[last], stamp + last, last, run_id),
        )
    with psycopg.connect(dbname=db_name, autocommit=True, **PG) as conn:
        conn.execute("VACUUM ANALYZE metrics")


def _now_ms() -> int:
    return int(time.time() * 1000)
