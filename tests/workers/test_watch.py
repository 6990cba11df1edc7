"""workers/watch.py, one deterministic case per path the supervisor tests reach only by timing.

A real claim, writer and ingest against the test database, and a real program process (a Python
that sleeps, in its own process group); the reader threads are replaced by chunks queued up front,
so what the loop sees is exactly what each case needs: a backlog bigger than a batch, a run that is
preempted, an attempt taken over, a lease that cannot be renewed, a maximum duration, a worker
shutting down, and pipes that never close.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import F

from runs import attempts
from runs.attempts import Claim
from runs.models import LogLine, Run, RunStatus
from workers import watch as watch_module
from workers.ingest import Ingest
from workers.process import ProgramProcess
from workers.streams import Chunk, ChunkQueue
from workers.watch import Watch
from workers.writer import AttemptWriter

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "test-watch"  # nothing consumes it: the test claims the run itself
EOF_CHUNKS = [Chunk("stdout", None), Chunk("stderr", None), Chunk("events", None)]


@pytest.fixture(autouse=True)
def quick_timers(settings: Any) -> None:
    settings.CONTROLPLANE = {
        **settings.CONTROLPLANE,
        "FLUSH_INTERVAL_SECONDS": 0.05,
        "HEARTBEAT_SECONDS": 30.0,  # the status poll (every second) is what these cases need
        "LEASE_SECONDS": 60.0,
        "CANCEL_GRACE_SECONDS": 5.0,
    }


class Harness:
    def __init__(self, owner: User, tmp_path: Path, program: str, **claim_fields: Any) -> None:
        run = Run.objects.create(name="watch", owner=owner, program="scripted", params={}, queue=QUEUE)
        claim = attempts.claim_run(run.pk, "test-worker")
        assert claim is not None
        self.claim: Claim = dataclasses.replace(claim, **claim_fields)
        self.log = structlog.get_logger("tests").bind(run_id=run.pk)
        self.process = ProgramProcess(self.log)
        self.popen = subprocess.Popen(
            [sys.executable, "-c", program], start_new_session=True, stdout=subprocess.DEVNULL
        )
        self.process.popen = self.popen
        self.stopped: list[str] = []
        self.writer = AttemptWriter(
            run.pk, self.claim.attempt, django_settings.CONTROLPLANE, self.log, on_fenced_off=self._fenced_off
        )
        self.chunks = ChunkQueue(max_chunks=1_000_000, max_bytes=1 << 30)
        self.shutdown = threading.Event()
        self.directory = tmp_path

    def _fenced_off(self, reason: str) -> None:
        self.stopped.append(reason)
        self.process.kill(reason)

    def watch(self) -> Watch:
        return Watch(
            self.claim,
            self.directory,
            self.chunks,
            process=self.process,
            ingest=Ingest(self.claim.run_id, self.writer, self.log),
            writer=self.writer,
            config=django_settings.CONTROLPLANE,
            shutdown=self.shutdown,
            log=self.log,
        )

    def system_lines(self) -> list[str]:
        self.writer.flush()
        return list(
            LogLine.objects.filter(run_id=self.claim.run_id, stream="system").values_list("line", flat=True)
        )


def test_a_backlog_left_when_the_program_exits_is_drained_in_bounded_batches(
    owner: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "MAX_BATCH_ROWS", 40)
    harness = Harness(owner, tmp_path, "pass")
    harness.popen.wait(timeout=30)  # already gone: everything below is left to drain
    for chunk in [*EOF_CHUNKS, *(Chunk("stdout", f"line {i}".encode()) for i in range(300))]:
        harness.chunks.put(chunk)
    flushed_sizes: list[int] = []
    flush = harness.writer.flush

    def counting_flush() -> bool:
        flushed_sizes.append(harness.writer.batch.rows)
        return flush()

    monkeypatch.setattr(harness.writer, "flush", counting_flush)
    assert harness.watch().run() == 0
    harness.writer.flush()
    lines = list(
        LogLine.objects.filter(run_id=harness.claim.run_id, stream="stdout")
        .order_by("seq")
        .values_list("line", flat=True)
    )
    assert lines == [f"line {i}" for i in range(300)]
    assert max(flushed_sizes) == 40  # never a batch above the bound, however long the backlog


def test_a_backlog_drained_while_the_database_is_down_keeps_only_the_bounded_buffer(
    owner: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setattr(watch_module, "MAX_BATCH_ROWS", 40)
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "MAX_BUFFERED_LINES": 100}
    harness = Harness(owner, tmp_path, "pass")
    harness.popen.wait(timeout=30)
    watch = harness.watch()  # reads the bound now
    harness.writer.flush_failures = 3  # the last writes failed: the outage buffer's bound applies
    for i in range(300):
        harness.chunks.put(Chunk("stdout", f"line {i}".encode()))
    watch._open_streams = 0
    watch._take_output()  # while the program runs: buffered, trimmed as output arrives
    assert harness.writer.batch.rows == 40
    watch._drain()
    # The bound, the newest lines kept (the tail usually says what went wrong); none written.
    assert [line for _, _, line in harness.writer.batch.lines] == [f"line {i}" for i in range(200, 300)]
    assert not LogLine.objects.filter(run_id=harness.claim.run_id).exists()


def test_a_preempted_run_is_stopped_like_a_cancel_with_a_line_that_says_why(
    owner: User, tmp_path: Path, settings: Any
) -> None:
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "HEARTBEAT_SECONDS": 0.3}  # the lease renewal says so
    harness = Harness(owner, tmp_path, "import time; time.sleep(60)")
    for chunk in EOF_CHUNKS:
        harness.chunks.put(chunk)
    Run.objects.filter(pk=harness.claim.run_id).update(status=RunStatus.PREEMPTED)
    started = time.monotonic()
    assert harness.watch().run() == -15  # SIGTERM, within the status poll
    assert time.monotonic() - started < 10
    assert "stopping the program: preempted by a higher-priority run" in harness.system_lines()


def test_an_attempt_taken_over_is_fenced_off_and_its_program_killed(owner: User, tmp_path: Path) -> None:
    harness = Harness(owner, tmp_path, "import time; time.sleep(60)")
    for chunk in EOF_CHUNKS:
        harness.chunks.put(chunk)
    Run.objects.filter(pk=harness.claim.run_id).update(attempt=F("attempt") + 1)
    assert harness.watch().run() == -9
    assert harness.writer.fenced_off
    # Fenced off at the first poll, and again at each poll until the killed program is reaped.
    assert set(harness.stopped) == {"another attempt owns the run"}


def test_a_lease_that_cannot_be_renewed_in_time_fences_the_attempt_off(
    owner: User, tmp_path: Path, settings: Any
) -> None:
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "LEASE_SECONDS": 0.5}
    harness = Harness(owner, tmp_path, "import time; time.sleep(60)")
    for chunk in EOF_CHUNKS:
        harness.chunks.put(chunk)
    watch = harness.watch()
    connection.ensure_connection()
    _terminate_backend(connection.connection.info.backend_pid)  # the status poll meets a dead connection
    assert watch.run() == -9
    assert harness.stopped[0] == "could not renew the lease in time"


def test_the_maximum_duration_ends_the_program(owner: User, tmp_path: Path) -> None:
    harness = Harness(owner, tmp_path, "import time; time.sleep(60)", max_duration_seconds=1)
    for chunk in EOF_CHUNKS:
        harness.chunks.put(chunk)
    watch = harness.watch()
    assert watch.run() == -15
    assert watch.timed_out
    assert "stopping the program: maximum duration of 1 s reached" in harness.system_lines()


def test_a_worker_shutting_down_stops_the_program(owner: User, tmp_path: Path) -> None:
    harness = Harness(owner, tmp_path, "import time; time.sleep(60)")
    for chunk in EOF_CHUNKS:
        harness.chunks.put(chunk)
    harness.shutdown.set()
    assert harness.watch().run() == -15
    assert "stopping the program: worker shutting down" in harness.system_lines()


def test_pipes_held_open_after_the_program_exits_are_given_up_on(
    owner: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "PIPES_GRACE_SECONDS", 0.2)
    monkeypatch.setattr(watch_module, "PIPES_GIVE_UP_SECONDS", 0.6)
    harness = Harness(owner, tmp_path, "pass")  # no end-of-file chunk ever arrives
    started = time.monotonic()
    assert harness.watch().run() == 0
    assert 0.6 <= time.monotonic() - started < 10


def _terminate_backend(pid: int) -> None:
    db = django_settings.DATABASES["default"]
    conninfo = (
        f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
    )
    with psycopg.connect(conninfo, autocommit=True) as control:
        control.execute("SELECT pg_terminate_backend(%s)", [pid])
