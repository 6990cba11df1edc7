"""The supervisor's rarer paths, with a supervisor in this process and real programs under it.

The e2e and chaos suites drive supervisors inside Celery workers; these tests call
`Supervisor(run_id).run()` directly (as the task does) against the test database, so each edge
case is one deterministic test: a program that vanished from the registry, an interpreter that
cannot start, another attempt taking the run over, oversized event lines, and artifact events
that name a directory or a broken safetensors file.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.db.models import F

from runs.models import Artifact, ErrorKind, LogLine, MetricPoint, Run, RunStatus
from runs.programs import get_program, resolve_params
from runs.protocol import MAX_EVENT_LINE_BYTES
from tests.conftest import process_alive, wait_for
from workers.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "test-supervisor-edges"  # nothing consumes it: these runs are supervised by the test itself

PROGRAMS = """
[programs.edge]
command = ["{python}", "-m", "tests.workers.edge_program"]
description = "Edge cases of the protocol (tests/workers/edge_program.py)"

[programs.edge.params]
mode = { type = "string", default = "files", enum = ["long_event", "files", "print", "sleep"] }
seconds = { type = "number", default = 0, minimum = 0, maximum = 120 }
lines = { type = "integer", default = 0, minimum = 0, maximum = 100000 }
"""


@pytest.fixture(autouse=True)
def worker_settings(settings: Any, tmp_path: Path) -> None:
    programs = tmp_path / "programs.toml"
    programs.write_text(PROGRAMS)
    settings.PROGRAMS_FILE = str(programs)
    settings.RUNS_DIR = tmp_path / "runs"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.CONTROLPLANE = {
        **settings.CONTROLPLANE,
        "HEARTBEAT_SECONDS": 0.2,
        "FLUSH_INTERVAL_SECONDS": 0.05,
        "LEASE_SECONDS": 30.0,
        "CANCEL_GRACE_SECONDS": 1.0,
    }


def edge_run(owner: User, **params: Any) -> Run:
    program = get_program("edge")
    assert program is not None
    return Run.objects.create(
        name="edge", owner=owner, program="edge", params=resolve_params(program, params), queue=QUEUE
    )


def log_text(run: Run) -> list[str]:
    return list(LogLine.objects.filter(run=run).order_by("seq").values_list("line", flat=True))


def test_a_program_no_longer_registered_fails_the_run_as_a_config_error(owner: User) -> None:
    run = Run.objects.create(name="gone", owner=owner, program="retired", params={}, queue=QUEUE)
    assert Supervisor(run.pk).run() == "failed"
    run.refresh_from_db()
    assert (run.status, run.error_kind, run.error_code) == (
        RunStatus.FAILED,
        ErrorKind.CONFIG,
        "unknown_program",
    )
    assert "'retired' is no longer registered on this worker" in run.error_message


def test_a_secret_deleted_since_the_launch_fails_the_run_before_its_program_starts(owner: User) -> None:
    program = get_program("edge")
    assert program is not None
    run = Run.objects.create(
        name="secretive",
        owner=owner,
        program="edge",
        params=resolve_params(program, {"mode": "files"}),
        secrets=["DELETED_SINCE_LAUNCH"],
        queue=QUEUE,
    )
    assert Supervisor(run.pk).run() == RunStatus.FAILED
    run.refresh_from_db()
    assert (run.error_kind, run.error_code) == (ErrorKind.CONFIG, "unknown_secret")
    assert log_text(run)[-1] == "secret 'DELETED_SINCE_LAUNCH' no longer exists"
    assert not run_dir_of(run).exists()  # nothing was started


def test_a_worker_whose_interpreter_cannot_start_fails_the_run_with_the_os_error(
    owner: User, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What a worker sees when its virtualenv was replaced under it: exec of the interpreter fails.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "gone" / "python"))
    run = edge_run(owner, mode="files")
    assert Supervisor(run.pk).run() == "failed"
    run.refresh_from_db()
    assert (run.status, run.error_code) == (RunStatus.FAILED, "cannot_start")
    assert run.error_message.startswith("could not start")
    assert "No such file or directory" in run.error_message
    assert run.error_message in log_text(run)[-1]


def test_a_supervisor_whose_run_was_taken_by_another_attempt_kills_its_program_and_steps_back(
    owner: User,
) -> None:
    run = edge_run(owner, mode="sleep", seconds=60)
    supervisor = Supervisor(run.pk)
    pid_file = Path(str(run_dir_of(run))) / "program.pid"
    taken = threading.Event()

    def take_over() -> None:
        # The reconciler requeued the run and another worker claimed it: the attempt number moved.
        try:
            wait_for(pid_file.exists, 60, message="the program to start")
            Run.objects.filter(pk=run.pk).update(attempt=F("attempt") + 1)
            taken.set()
        finally:
            connections.close_all()

    helper = threading.Thread(target=take_over)
    helper.start()
    started = time.monotonic()
    outcome = supervisor.run()
    helper.join(timeout=30)
    assert taken.is_set()
    assert outcome == "abandoned"
    assert time.monotonic() - started < 30
    assert not process_alive(int(pid_file.read_text()))
    run.refresh_from_db()
    # The newer attempt owns the row: this supervisor finished nothing.
    assert (run.status, run.attempt, run.finished_at) == (RunStatus.RUNNING, 2, None)


def run_dir_of(run: Run) -> Path:
    from runs.storage import run_dir

    return run_dir(run.pk)


def test_an_event_line_over_the_protocol_limit_is_skipped_and_the_next_event_kept(owner: User) -> None:
    run = edge_run(owner, mode="long_event")
    assert Supervisor(run.pk).run() == RunStatus.SUCCEEDED
    skipped = [line for line in log_text(run) if line.startswith("skipped a malformed event")]
    assert len(skipped) == 1
    assert f"event line longer than {MAX_EVENT_LINE_BYTES} bytes" in skipped[0]
    assert len(skipped[0]) < 400  # a preview, not the megabyte
    points = MetricPoint.objects.filter(series__run=run, series__key="train/loss")
    assert list(points.values_list("step", "value")) == [(1, 0.25)]


def test_artifact_events_naming_a_directory_or_a_broken_safetensors_file_are_handled(owner: User) -> None:
    run = edge_run(owner, mode="files")
    assert Supervisor(run.pk).run() == RunStatus.SUCCEEDED
    lines = log_text(run)
    assert "refused artifact event: 'a-directory' is not a file" in lines
    stored = {artifact.name: artifact for artifact in Artifact.objects.filter(run=run)}
    assert set(stored) == {"broken.safetensors", "notes.txt"}
    # A model file whose header does not parse is still kept (its bytes are the user's), marked.
    assert "header_error" in stored["broken.safetensors"].metadata
    assert stored["notes.txt"].size == len("fine\n")
    assert os.path.isfile(Path(str(run_dir_of(run))) / "notes.txt")
