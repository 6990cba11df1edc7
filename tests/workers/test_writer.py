"""workers/writer.py: an attempt's writes are fenced by the attempt, and the outcome outlasts an outage.

The supervisor tests reach these paths only by racing a real takeover or a real outage; here each
is one deterministic case against the test database: another attempt took the run just before a
flush, or before a checkpoint's registration, and a database that refuses `finish_attempt` a few
times (or until the lease would end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import OperationalError
from django.db.models import F

from runs import attempts
from runs.attempts import Claim, Outcome, system_line
from runs.models import Checkpoint, LogLine, Run, RunStatus
from workers.writer import AttemptWriter

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "test-writer"  # nothing consumes it: the test claims the run itself


@pytest.fixture(autouse=True)
def fast_retries(settings: Any) -> None:
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "FLUSH_INTERVAL_SECONDS": 0.01, "LEASE_SECONDS": 30.0}


def claimed(owner: User) -> Claim:
    run = Run.objects.create(name="writer", owner=owner, program="scripted", params={}, queue=QUEUE)
    claim = attempts.claim_run(run.pk, "test-worker")
    assert claim is not None
    return claim


def writer_for(claim: Claim, stopped: list[str]) -> AttemptWriter:
    log = structlog.get_logger("tests").bind(run_id=claim.run_id)
    return AttemptWriter(
        claim.run_id, claim.attempt, django_settings.CONTROLPLANE, log, on_fenced_off=stopped.append
    )


def take_over(claim: Claim) -> None:
    # The reconciler requeued the run and another worker claimed it: the attempt number moved.
    Run.objects.filter(pk=claim.run_id).update(attempt=F("attempt") + 1)


def test_a_flush_after_another_attempt_took_the_run_fences_the_writer_off_and_stops_the_program(
    owner: User,
) -> None:
    claim = claimed(owner)
    stopped: list[str] = []
    writer = writer_for(claim, stopped)
    writer.say(system_line("written by an attempt that no longer owns the run"))
    take_over(claim)

    assert writer.flush()  # nothing is kept for a retry: this attempt may write nothing more
    assert writer.fenced_off
    assert stopped == ["another attempt owns the run"]
    assert not LogLine.objects.filter(run_id=claim.run_id).exists()
    assert writer.final_flush() is False


def test_a_checkpoint_reported_after_another_attempt_took_the_run_is_dropped_unregistered(
    owner: User, tmp_path: Path
) -> None:
    claim = claimed(owner)
    (tmp_path / "step-1.pt").write_bytes(b"weights")
    stopped: list[str] = []
    writer = writer_for(claim, stopped)
    writer.pending_files.append({"type": "checkpoint", "path": "step-1.pt", "step": 1})
    take_over(claim)

    assert writer.register_files(tmp_path)
    assert (writer.pending_files, writer.fenced_off, stopped) == ([], True, ["another attempt owns the run"])
    assert not Checkpoint.objects.filter(run_id=claim.run_id).exists()


def refusing(times: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """finish_attempt fails `times` times as if the database were down, then runs for real."""
    real = attempts.finish_attempt
    calls: list[int] = []

    def flaky(run_id: int, attempt: int, outcome: Outcome) -> RunStatus | None:
        calls.append(attempt)
        if len(calls) <= times:
            raise OperationalError("server closed the connection unexpectedly")
        return real(run_id, attempt, outcome)

    monkeypatch.setattr(attempts, "finish_attempt", flaky)
    return calls


def test_the_outcome_is_retried_through_a_short_outage_and_recorded(
    owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = claimed(owner)
    calls = refusing(2, monkeypatch)

    assert writer_for(claim, []).finish(Outcome(RunStatus.SUCCEEDED, 0)) == RunStatus.SUCCEEDED
    assert len(calls) == 3
    assert Run.objects.get(pk=claim.run_id).status == RunStatus.SUCCEEDED


def test_an_outage_that_outlasts_the_lease_leaves_the_outcome_to_the_reconciler(
    owner: User, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "LEASE_SECONDS": 0.05}
    claim = claimed(owner)
    refusing(1000, monkeypatch)

    assert writer_for(claim, []).finish(Outcome(RunStatus.SUCCEEDED, 0)) == "unreachable"
    assert Run.objects.get(pk=claim.run_id).status == RunStatus.RUNNING
