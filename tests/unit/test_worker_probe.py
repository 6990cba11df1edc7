"""Worker and beat probes: the heartbeat file the worker rewrites, and the checks that read it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ops.worker_heartbeat import Heartbeat
from ops.worker_probe import check, main, write_heartbeat
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_a_fresh_published_heartbeat_is_live_and_ready(tmp_path: Path) -> None:
    path = tmp_path / "worker-heartbeat"
    write_heartbeat(path, published=True)
    assert check("live", path, 60) is None
    assert check("ready", path, 30) is None
    assert not list(tmp_path.glob("*.partial"))


def test_a_worker_that_cannot_reach_redis_is_live_but_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "worker-heartbeat"
    write_heartbeat(path, published=False)
    assert check("live", path, 60) is None
    assert check("ready", path, 30) == "the last heartbeat did not reach Redis"


def test_a_stale_or_missing_heartbeat_fails_both_probes(tmp_path: Path) -> None:
    path = tmp_path / "worker-heartbeat"
    assert check("live", path, 60) == f"{path} does not exist (yet)"
    write_heartbeat(path, published=True)
    later = time.time() + 61
    assert check("live", path, 60, now=later) == f"{path} is 61 s old (> 60 s)"
    assert check("ready", path, 30, now=later) is not None


def test_beats_probe_reads_the_newest_schedule_file_whatever_suffix_dbm_added(tmp_path: Path) -> None:
    (tmp_path / "celerybeat-schedule.db").write_text("x")
    old = time.time() - 1000
    os.utime(tmp_path / "celerybeat-schedule.db", (old, old))
    assert check("file", tmp_path / "celerybeat-schedule", 600) is not None
    (tmp_path / "celerybeat-schedule.dat").write_text("x")
    assert check("file", tmp_path / "celerybeat-schedule", 600) is None


def test_the_command_needs_the_configured_file_and_exits_by_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONTROLPLANE_WORKER_HEARTBEAT_FILE", raising=False)
    assert main(["live"]) == 1
    assert "CONTROLPLANE_WORKER_HEARTBEAT_FILE is not set" in capsys.readouterr().err
    path = tmp_path / "hb"
    monkeypatch.setenv("CONTROLPLANE_WORKER_HEARTBEAT_FILE", str(path))
    write_heartbeat(path, published=False)
    assert main(["live", "--max-age", "10"]) == 0
    assert main(["ready"]) == 1
    assert main(["file", str(path)]) == 0


def test_the_probe_starts_without_django() -> None:
    # Probes run every few seconds in every worker pod: no settings, no app loading.
    code = "import sys, ops.worker_probe; print(sorted(m for m in sys.modules if m.startswith('django')))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("redis_url", "expected"), [(None, "published"), ("redis://127.0.0.1:1/0", "failing")]
)
def test_the_worker_heartbeat_rewrites_the_file_with_whether_redis_took_it(
    settings: Any, tmp_path: Path, redis_url: str | None, expected: str
) -> None:
    path = tmp_path / "worker-heartbeat"
    settings.WORKER_HEARTBEAT_FILE = str(path)
    if redis_url:
        settings.REDIS_URL = redis_url
    heartbeat = Heartbeat("probe-test", ["training"], interval=0.05)
    heartbeat.start()
    try:
        wait_for(lambda: path.is_file() and path.read_text() == expected, 10, message="the heartbeat file")
        first = path.stat().st_mtime_ns
        wait_for(lambda: path.stat().st_mtime_ns > first, 10, message="a second heartbeat")
    finally:
        heartbeat.stop()
