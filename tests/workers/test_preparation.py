"""workers/preparation.py: which checkpoint a new attempt resumes from, and staging a dataset
while the lease is kept, cancelled, or lost; against the real database and a loopback HTTP source."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.db.models import F

from runs import attempts
from runs.attempts import Claim
from runs.models import ErrorKind, Run, RunAttempt, RunStatus
from workers.preparation import DATASET_PATH, choose_checkpoint, stage_run_dataset

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "test-preparation"
CORPUS = ("a corpus that arrives slowly, line after line of it.\n" * 400).encode()


class Said:
    """Collects what the supervisor would add to the run's log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: tuple[datetime, str, str]) -> None:
        self.lines.append(line[2])


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = info


def claimed(owner: User, **params: Any) -> Claim:
    run = Run.objects.create(name="prep", owner=owner, program="scripted", params=params, queue=QUEUE)
    claim = attempts.claim_run(run.pk, "worker-prep")
    assert claim is not None
    return claim


def checkpoint(claim: Claim, directory: Path, step: int, content: bytes) -> Path:
    path = directory / "checkpoints" / f"step-{step}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    attempts.register_checkpoint(
        claim.run_id,
        claim.attempt,
        step,
        f"checkpoints/step-{step}.pt",
        len(content),
        hashlib.sha256(content).hexdigest(),
    )
    return path


def test_the_newest_intact_checkpoint_is_chosen_and_the_broken_ones_are_said(
    owner: User, tmp_path: Path
) -> None:
    claim = claimed(owner)
    checkpoint(claim, tmp_path, 10, b"step ten")
    damaged = checkpoint(claim, tmp_path, 20, b"step twenty")
    missing = checkpoint(claim, tmp_path, 30, b"step thirty")
    damaged.write_bytes(b"step twentY")
    missing.unlink()
    said, log = Said(), Log()
    assert choose_checkpoint(claim.run_id, claim.attempt, tmp_path, said, log) == "checkpoints/step-10.pt"
    assert said.lines == [
        "checkpoint of step 30 is missing; trying an older one",
        "checkpoint of step 20 is damaged (sha256 mismatch); trying an older one",
        "resuming from the checkpoint of step 10",
    ]
    assert RunAttempt.objects.get(run_id=claim.run_id, number=claim.attempt).resumed_from_step == 10
    assert [name for name, _ in log.events] == ["checkpoint_unusable", "checkpoint_unusable", "resuming"]


def test_a_checkpoint_recorded_outside_the_run_directory_is_never_read(owner: User, tmp_path: Path) -> None:
    claim = claimed(owner)
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"not ours")
    attempts.register_checkpoint(
        claim.run_id, claim.attempt, 5, "../elsewhere.pt", 8, hashlib.sha256(b"not ours").hexdigest()
    )
    run_directory = tmp_path / "run"
    run_directory.mkdir()
    said = Said()
    assert choose_checkpoint(claim.run_id, claim.attempt, run_directory, said, Log()) is None
    assert said.lines == ["checkpoint of step 5 is missing; trying an older one"]


class SlowSource(http.server.BaseHTTPRequestHandler):
    """Sends the corpus in pieces over about `seconds`, so staging outlasts a few heartbeats."""

    seconds = 1.5

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(CORPUS)))
        self.end_headers()
        pieces = 10
        size = len(CORPUS) // pieces + 1
        for start in range(0, len(CORPUS), size):
            self.wfile.write(CORPUS[start : start + size])
            self.wfile.flush()
            time.sleep(SlowSource.seconds / pieces)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def slow_source() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowSource)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/corpus.txt"
    server.shutdown()


def in_background(action: Any, delay: float) -> threading.Thread:
    def run() -> None:
        try:
            time.sleep(delay)
            action()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_run_without_a_dataset_url_stages_nothing(owner: User, tmp_path: Path) -> None:
    claim = claimed(owner)
    assert stage_run_dataset(claim.run_id, claim, tmp_path, 0.1, Said()) == (None, None)
    assert list(tmp_path.iterdir()) == []


def test_a_slow_dataset_is_staged_while_the_lease_is_renewed(
    owner: User, tmp_path: Path, slow_source: str
) -> None:
    claim = claimed(owner, dataset_url=slow_source)
    before = Run.objects.get(pk=claim.run_id).lease_expires_at
    said = Said()
    assert stage_run_dataset(claim.run_id, claim, tmp_path, 0.1, said) == (DATASET_PATH, None)
    assert (tmp_path / DATASET_PATH).read_bytes() == CORPUS
    assert said.lines == [f"dataset staged: {len(CORPUS)} bytes, sha256 {hashlib.sha256(CORPUS).hexdigest()}"]
    after = Run.objects.get(pk=claim.run_id).lease_expires_at
    assert before is not None and after is not None and after > before


def test_a_cancel_during_staging_ends_the_attempt_cancelled_once_the_fetch_returns(
    owner: User, tmp_path: Path, slow_source: str
) -> None:
    claim = claimed(owner, dataset_url=slow_source)
    helper = in_background(
        lambda: Run.objects.filter(pk=claim.run_id).update(status=RunStatus.CANCELLING), delay=0.3
    )
    path, outcome = stage_run_dataset(claim.run_id, claim, tmp_path, 0.1, Said())
    helper.join()
    assert path is None
    assert outcome is not None
    assert (outcome.status, outcome.error_kind, outcome.error_code) == (
        RunStatus.CANCELLED,
        ErrorKind.CANCELLED,
        "cancelled",
    )
    assert outcome.error_message == "cancelled while staging the dataset"


def test_losing_the_lease_during_staging_does_not_crash_it(
    owner: User, tmp_path: Path, slow_source: str
) -> None:
    # Another attempt took the run: renewals fail from then on, and the caller's next write
    # (the supervisor's) is the one refused by the fencing token.
    claim = claimed(owner, dataset_url=slow_source)
    helper = in_background(
        lambda: Run.objects.filter(pk=claim.run_id).update(attempt=F("attempt") + 1), delay=0.3
    )
    assert stage_run_dataset(claim.run_id, claim, tmp_path, 0.1, Said()) == (DATASET_PATH, None)
    helper.join()


def test_an_unreachable_source_fails_the_attempt_as_infrastructure(
    owner: User, tmp_path: Path, settings: Any
) -> None:
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "DATASET_RETRIES": 1, "DATASET_TIMEOUT_SECONDS": 2.0}
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    claim = claimed(owner, dataset_url=f"http://127.0.0.1:{port}/corpus.txt")
    path, outcome = stage_run_dataset(claim.run_id, claim, tmp_path, 0.1, Said())
    assert path is None
    assert outcome is not None
    assert (outcome.status, outcome.error_kind, outcome.error_code) == (
        RunStatus.FAILED,
        ErrorKind.INFRASTRUCTURE,
        "dataset_unavailable",
    )
    assert outcome.error_message.startswith("dataset: ")


def test_a_dataset_that_breaks_its_rules_fails_the_attempt_as_data(owner: User, tmp_path: Path) -> None:
    claim = claimed(owner, dataset_url="ftp://example.invalid/corpus.txt")
    path, outcome = stage_run_dataset(claim.run_id, claim, tmp_path, 0.1, Said())
    assert path is None
    assert outcome is not None
    assert (outcome.error_kind, outcome.error_code) == (ErrorKind.DATA, "invalid_dataset")
    assert "dataset_url must be an http(s) URL" in outcome.error_message
