"""Backpressure: a program that floods its pipes never grows the supervisor past a bound.

The issue asks for a 60 s flood; CI runs FLOOD_SECONDS (15 s) with the same assertion, against a
database made slower than the program (every batch write sleeps), so the queue and the pipes stay
full for the whole flood. What is checked: the supervisor's memory (this process's RSS, sampled)
grows less than 64 MiB, the queue never holds more than its byte bound, and every point the
program reported is stored, none dropped or repeated.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from runs import batches
from runs.models import LogLine, MetricPoint, Run, RunStatus
from runs.programs import get_program, resolve_params
from workers import streams
from workers.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)
FLOOD_SECONDS = 15
RSS_BOUND = 64 * 1024 * 1024

PROGRAMS = """
[programs.flood]
command = ["{python}", "-m", "tests.workers.flood_program"]
description = "Reports as fast as the pipes take it (tests/workers/flood_program.py)"

[programs.flood.params]
seconds = { type = "number", default = 0, minimum = 0, maximum = 120 }
points = { type = "integer", default = 0, minimum = 0, maximum = 10000000 }
keys = { type = "integer", default = 1, minimum = 1, maximum = 100 }
per_line = { type = "integer", default = 1000, minimum = 1, maximum = 10000 }
"""


@pytest.fixture(autouse=True)
def worker_settings(settings: Any, tmp_path: Path) -> None:
    programs = tmp_path / "programs.toml"
    programs.write_text(PROGRAMS)
    settings.PROGRAMS_FILE = str(programs)
    settings.RUNS_DIR = tmp_path / "runs"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "HEARTBEAT_SECONDS": 0.5, "LEASE_SECONDS": 30.0}


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class Sampler(threading.Thread):
    """The peak RSS of this process and the fullest the chunk queues got, every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.base = rss()
        self.peak = self.base
        self.queue_peak = 0
        self.queues: list[streams.ChunkQueue] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss())
            for chunks in self.queues:
                self.queue_peak = max(self.queue_peak, chunks.bytes)


def test_a_flooding_program_waits_for_a_slow_database_and_the_supervisor_stays_bounded(
    owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batch = batches.write_batch

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)  # a database slower than the program: the flood must wait, not pile up
        return write_batch(*args, **kwargs)

    monkeypatch.setattr(batches, "write_batch", slow_write)
    sampler = Sampler()
    created = streams.ChunkQueue.__init__

    def tracked(self: streams.ChunkQueue, *args: Any, **kwargs: Any) -> None:
        created(self, *args, **kwargs)
        sampler.queues.append(self)

    monkeypatch.setattr(streams.ChunkQueue, "__init__", tracked)
    program = get_program("flood")
    assert program is not None
    run = Run.objects.create(
        name="flood",
        owner=owner,
        program="flood",
        params=resolve_params(program, {"seconds": FLOOD_SECONDS, "keys": 4}),
        queue="test-backpressure",
    )
    sampler.start()
    try:
        assert Supervisor(run.pk).run() == RunStatus.SUCCEEDED
    finally:
        sampler.stop.set()
        sampler.join()
    reported = next(
        json.loads(line)["reported"]
        for line in LogLine.objects.filter(run=run, line__startswith='{"reported"').values_list(
            "line", flat=True
        )
    )
    assert reported > 10_000  # the flood did flood
    points = MetricPoint.objects.filter(series__run=run)
    assert points.exclude(series__key__startswith="system/").count() == reported * 4
    # The supervisor went on sampling the program's group through the flood (every 5 s by default).
    assert points.filter(series__key="system/rss_mib").count() >= 1
    assert sampler.queue_peak <= streams.DEFAULT_QUEUE_BYTES + 1024 * 1024  # one event line over at most
    growth = sampler.peak - sampler.base
    print(
        f"flood: {reported * 4} points, RSS growth {growth / 2**20:.1f} MiB, queue peak {sampler.queue_peak} B"
    )
    assert growth < RSS_BOUND, f"the supervisor grew {growth / 2**20:.0f} MiB under a {FLOOD_SECONDS} s flood"
