"""Pooled connections killed under load: no spurious 503 while Postgres is up.

A short run of `bench/db_kill_loop.py` (the 30-minute figure is in docs/benchmarks.md): uvicorn on
a throwaway database serves reads and launches while its idle connections are terminated with
`pg_terminate_backend` about once a second. The bench is a subprocess: it sets Django up on its
own database, which this test process (already on the test database) cannot do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import ROOT

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


def test_killed_pooled_connections_cost_no_request_a_503(tmp_path: Path) -> None:
    out = tmp_path / "db-kill.json"
    env = {"PATH": "/usr/bin:/bin", "BENCH_REDIS_URL": settings.REDIS_URL or "redis://127.0.0.1:6379/0"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.db_kill_loop", "--minutes", "0.75", "--seed", "11", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["kill_rounds"] >= 15 and result["backends_killed"] > 0, result
    assert result["requests"] > 300 and result["launches"] > 20, result
    assert result["postgres_down_seconds"] == 0
    assert result["unavailable_503"] == 0, result.get("samples")
    assert result["transport_errors"] == 0 and result["web_alive"], result
    assert done.returncode == 0
