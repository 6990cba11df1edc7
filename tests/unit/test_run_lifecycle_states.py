"""runs/lifecycle: a stateful, property-based walk over the run lifecycle, against the real Postgres.

Hypothesis drives launches, claims, heartbeats, program exits, lease expiries (the reconciler
with a `now` in the future), cancels, retries and dead-letter requeues and discards, each through
the product's own functions; a simple model predicts every outcome. After every step:

- each run's status, attempt and dead-letter state equal the model's;
- every status change observed is a row of the transition table, and of a row the step's action
  may fire;
- "terminal" means: no step changes the status of a succeeded, failed, cancelled or dead run,
  except an explicit user action that reopens it (retry, dead-letter requeue);
- a run has at most one open attempt (exactly one while live, numbered like the run), attempt
  numbers only grow and have no gaps;
- the finished counter grew once per entry into a terminal status; one audit record per user
  action that went through.

`CONTROLPLANE_LIFECYCLE_EXAMPLES` sets how many sequences run (default 200; derandomized, so CI
sees the same ones every time). Each walk runs in one transaction that is rolled back after it,
so on-commit work (broadcasts, the enqueue after a retry) does not run here; the reconciler's own
dispatch does reach the local Redis.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from audit.models import AuditRecord
from ops.models import RunOutcomeCount
from runs import lifecycle, services
from runs.attempts import Outcome, StaleAttempt, claim_run, finish_attempt, renew_lease
from runs.lifecycle import Trigger
from runs.models import ErrorKind, Run, RunAttempt, RunStatus
from runs.reconciler import reconcile
from tests.conftest import make_user

QUEUE = "test-lifecycle"  # nothing consumes it
EXAMPLES = int(os.environ.get("CONTROLPLANE_LIFECYCLE_EXAMPLES", "200"))
STEPS = 12  # per walk: deep enough to spend a run's attempts, retry it and requeue it
# The specification, written out here rather than read from the table under test.
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "dead"})
LIVE = frozenset({"running", "cancelling", "preempted"})
REOPENING_ACTIONS = frozenset({"retry", "requeue"})
NOT_QUEUED = frozenset({"running", "cancelling", "preempted", "succeeded", "failed", "cancelled", "dead"})
EXIT_OUTCOMES = {
    "succeeded": Outcome(RunStatus.SUCCEEDED, 0),
    "permanent": Outcome(RunStatus.FAILED, 1, ErrorKind.PROGRAM, "exit_1", "the program raised"),
    "transient": Outcome(RunStatus.FAILED, None, ErrorKind.DEVICE, "cuda_error", "the device fell off"),
    "cancelled": Outcome(RunStatus.CANCELLED, -15, ErrorKind.CANCELLED, "cancelled", "cancelled by a user"),
}
# Which rows each action may fire; a status change outside these rows is a failure.
ACTION_TRIGGERS = {
    "claim": {Trigger.CLAIM},
    "heartbeat": set(),
    "exit": set(lifecycle.EXIT_TRIGGERS),
    "reconcile": {*lifecycle.LEASE_EXPIRY_TRIGGERS, Trigger.QUEUE_TTL_EXPIRED},
    "cancel": {Trigger.CANCEL_QUEUED, Trigger.CANCEL_REQUEST, Trigger.CANCEL_REPEATED},
    "retry": {Trigger.RETRY},
    "requeue": {Trigger.DEAD_LETTER_REQUEUE},
    "discard": {Trigger.DEAD_LETTER_DISCARD},
}


@dataclass
class ModelRun:
    """What the model expects of one run."""

    pk: int
    status: str = "queued"
    attempt: int = 0
    max_attempts: int = 1
    discarded: bool = False


class RunLifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Each walk runs in a transaction that its teardown rolls back: the next walk starts from
        # an empty table without a TRUNCATE, and no commit waits for a disk flush.
        self.walk = transaction.atomic()
        self.walk.__enter__()
        self.owner = User.objects.get(username="lifecycle-owner")
        self.model: dict[int, ModelRun] = {}
        self.before: dict[int, tuple[str, int]] = {}
        self.action = "start"
        self.finished_base = _finished_total()
        self.audit_base = AuditRecord.objects.order_by("-id").values_list("pk", flat=True).first() or 0
        self.expected_finishes = 0
        self.expected_audits: Counter[str] = Counter()

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self.walk.__exit__(None, None, None)

    def _run(self, pk: int) -> Run:
        return Run.objects.get(pk=pk)

    def _any(self, wanted: set[str] | frozenset[str]) -> bool:
        return any(run.status in wanted for run in self.model.values())

    def _pick(self, data: st.DataObject, wanted: set[str] | frozenset[str]) -> int:
        """A run, mostly one the action applies to (so walks go deep), sometimes any run (so
        refusals are walked too)."""
        eligible = sorted(pk for pk, run in self.model.items() if run.status in wanted)
        if eligible and data.draw(st.integers(0, 2), label="eligible") > 0:
            return data.draw(st.sampled_from(eligible), label="run")
        return data.draw(st.sampled_from(sorted(self.model)), label="run")

    # -- actions ---------------------------------------------------------------------------------

    @initialize()
    def first_launch(self) -> None:
        self._launch(max_attempts=2, ttl=None)

    @precondition(lambda self: len(self.model) < 3)
    @rule(max_attempts=st.integers(1, 2), ttl=st.sampled_from([None, 600]))
    def launch(self, max_attempts: int, ttl: int | None) -> None:
        self._launch(max_attempts, ttl)

    def _launch(self, max_attempts: int, ttl: int | None) -> None:
        self.action = "launch"
        fields = {"name": "walk", "owner": self.owner, "program": "scripted", "queue": QUEUE}
        run = lifecycle.create_run(
            {**fields, "max_attempts": max_attempts, "queue_ttl_seconds": ttl}, actor=self.owner
        )
        self.model[run.pk] = ModelRun(run.pk, max_attempts=max_attempts)
        self.before[run.pk] = ("queued", 0)
        self.expected_audits["run.launch"] += 1

    @precondition(lambda self: self._any({"queued"}))
    @rule(data=st.data(), backoff_elapsed=st.booleans())
    def claim(self, data: st.DataObject, backoff_elapsed: bool) -> None:
        self.action = "claim"
        pk = self._pick(data, {"queued"})
        if backoff_elapsed:  # time passes: a requeued run's backoff is over
            Run.objects.filter(pk=pk).update(not_before=None)
        not_before = self._run(pk).not_before
        due = not_before is None or not_before <= timezone.now()
        claim = claim_run(pk, "worker-a")
        expected = self.model[pk]
        if expected.status == "queued" and due:
            assert claim is not None and claim.attempt == expected.attempt + 1
            expected.status, expected.attempt = "running", claim.attempt
        else:
            assert claim is None

    @precondition(lambda self: self._any(NOT_QUEUED))
    @rule(data=st.data())
    def late_delivery_claims(self, data: st.DataObject) -> None:
        """A message delivered again (a redispatch, a Redis redelivery) for a run that is not
        queued starts nothing, however the run ended."""
        self.action = "claim"
        candidates = sorted(pk for pk, run in self.model.items() if run.status in NOT_QUEUED)
        pk = data.draw(st.sampled_from(candidates), label="run")
        Run.objects.filter(pk=pk).update(not_before=None)  # however long ago it was due
        assert claim_run(pk, "worker-b") is None

    @precondition(lambda self: self._any(LIVE))
    @rule(data=st.data(), stale=st.booleans())
    def heartbeat(self, data: st.DataObject, stale: bool) -> None:
        self.action = "heartbeat"
        pk = self._pick(data, LIVE)
        expected = self.model[pk]
        attempt = expected.attempt - 1 if stale else expected.attempt
        if expected.status in LIVE and not stale:
            assert renew_lease(pk, attempt) == expected.status
        else:
            with pytest.raises(StaleAttempt):
                renew_lease(pk, attempt)

    @precondition(lambda self: self._any(LIVE))
    @rule(data=st.data(), how=st.sampled_from(sorted(EXIT_OUTCOMES)), stale=st.booleans())
    def program_exits(self, data: st.DataObject, how: str, stale: bool) -> None:
        self.action = "exit"
        pk = self._pick(data, LIVE)
        expected = self.model[pk]
        attempt = expected.attempt - 1 if stale else expected.attempt
        status = finish_attempt(pk, attempt, EXIT_OUTCOMES[how])
        if expected.status not in LIVE or stale:
            assert status is None
            return
        if how == "transient":
            expected.status = "dead" if expected.attempt >= expected.max_attempts else "queued"
        else:
            expected.status = {"succeeded": "succeeded", "permanent": "failed", "cancelled": "cancelled"}[how]
        assert status == expected.status

    @rule(seconds_later=st.sampled_from([0, 61, 3600]))
    def reconciler_runs(self, seconds_later: int) -> None:
        self.action = "reconcile"
        later = timezone.now() + timedelta(seconds=seconds_later)
        rows = Run.objects.filter(pk__in=list(self.model)).values_list(
            "pk", "lease_expires_at", "created_at", "queue_ttl_seconds"
        )
        facts = {pk: (lease, created, ttl) for pk, lease, created, ttl in rows}
        reconcile(later)
        for pk, expected in self.model.items():
            lease, created, ttl = facts[pk]
            # First the leases that ran out (the attempt is lost), then the queue TTL.
            if expected.status in LIVE and lease is not None and lease < later:
                if expected.status == "cancelling":
                    expected.status = "cancelled"
                else:
                    expected.status = "dead" if expected.attempt >= expected.max_attempts else "queued"
            if expected.status == "queued" and ttl is not None and _ttl_passed(created, ttl, later):
                expected.status = "failed"

    @precondition(lambda self: self._any({"queued", "running", "cancelling"}))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.action = "cancel"
        pk = self._pick(data, {"queued", "running", "cancelling"})
        expected = self.model[pk]
        if expected.status in {"queued", "running", "cancelling"}:
            services.do_cancel_run(self._run(pk), actor=self.owner)
            expected.status = "cancelled" if expected.status == "queued" else "cancelling"
            self.expected_audits["run.cancel"] += 1
        else:
            with pytest.raises(services.CancelError):
                services.do_cancel_run(self._run(pk), actor=self.owner)

    @precondition(lambda self: self._any({"failed", "cancelled", "dead"}))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        self.action = "retry"
        pk = self._pick(data, {"failed", "cancelled", "dead"})
        expected = self.model[pk]
        if expected.status in {"failed", "cancelled", "dead"}:
            services.do_retry_run(self._run(pk), actor=self.owner)
            expected.status = "queued"
            self.expected_audits["run.retry"] += 1
        else:
            with pytest.raises(services.RetryError):
                services.do_retry_run(self._run(pk), actor=self.owner)

    @precondition(lambda self: self._any({"dead"}))
    @rule(data=st.data())
    def requeue_dead_letter(self, data: st.DataObject) -> None:
        self.action = "requeue"
        pk = self._pick(data, {"dead"})
        expected = self.model[pk]
        if expected.status == "dead":
            services.do_requeue_dead_run(self._run(pk), actor=self.owner)
            expected.status, expected.discarded = "queued", False
            expected.max_attempts += expected.attempt
            self.expected_audits["dead_letter.requeue"] += 1
        else:
            with pytest.raises(services.DeadLetterError):
                services.do_requeue_dead_run(self._run(pk), actor=self.owner)

    @precondition(lambda self: self._any({"dead"}))
    @rule(data=st.data())
    def discard_dead_letter(self, data: st.DataObject) -> None:
        self.action = "discard"
        pk = self._pick(data, {"dead"})
        expected = self.model[pk]
        if expected.status == "dead" and not expected.discarded:
            services.do_discard_dead_run(self._run(pk), actor=self.owner)
            expected.discarded = True
            self.expected_audits["dead_letter.discard"] += 1
        else:
            with pytest.raises(services.DeadLetterError):
                services.do_discard_dead_run(self._run(pk), actor=self.owner)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def after_every_step(self) -> None:
        # One invariant, so the checks run in this order (the counter check needs the changes).
        self._the_database_agrees_with_the_model_and_the_table()
        self._a_run_has_at_most_one_open_attempt_and_numbers_only_grow()
        self._each_finish_is_counted_once_and_each_user_action_audited_once()

    def _the_database_agrees_with_the_model_and_the_table(self) -> None:
        rows = Run.objects.filter(pk__in=list(self.model)).values_list(
            "pk", "status", "attempt", "max_attempts", "discarded_at"
        )
        for pk, status, attempt, max_attempts, discarded_at in rows:
            expected = self.model[pk]
            before_status, before_attempt = self.before[pk]
            if status != before_status:
                self._check_change(pk, before_status, status)
            assert attempt >= before_attempt, f"run {pk}: attempt went back {before_attempt} → {attempt}"
            observed = (status, attempt, max_attempts, discarded_at is not None)
            wanted = (expected.status, expected.attempt, expected.max_attempts, expected.discarded)
            assert observed == wanted, f"after {self.action}, run {pk} is {observed}, the model says {wanted}"
            self.before[pk] = (status, attempt)

    def _check_change(self, pk: int, before: str, after: str) -> None:
        change = f"after {self.action}, run {pk} went {before} → {after}"
        assert _reachable(before, after, lifecycle.TRANSITIONS), f"{change}: no row of the table allows it"
        rows = [lifecycle.RULES[trigger] for trigger in ACTION_TRIGGERS.get(self.action, set())]
        assert _reachable(before, after, rows), f"{change}: not along the rows this action may fire"
        if before in TERMINAL:
            assert self.action in REOPENING_ACTIONS, f"{change}: a terminal run changed without a user action"
        if after in TERMINAL and before not in TERMINAL:
            self.expected_finishes += 1

    def _a_run_has_at_most_one_open_attempt_and_numbers_only_grow(self) -> None:
        attempts: dict[int, list[tuple[int, bool]]] = {pk: [] for pk in self.model}
        for run_id, number, finished_at in RunAttempt.objects.filter(run_id__in=list(self.model)).values_list(
            "run_id", "number", "finished_at"
        ):
            attempts[run_id].append((number, finished_at is None))
        for pk, expected in self.model.items():
            numbers = sorted(number for number, _ in attempts[pk])
            assert numbers == list(range(1, expected.attempt + 1)), f"run {pk}: attempts {numbers}"
            open_numbers = [number for number, is_open in attempts[pk] if is_open]
            wanted = [expected.attempt] if expected.status in LIVE else []
            assert open_numbers == wanted, f"run {pk} ({expected.status}): open attempts {open_numbers}"

    def _each_finish_is_counted_once_and_each_user_action_audited_once(self) -> None:
        assert _finished_total() - self.finished_base == self.expected_finishes
        recorded = Counter(
            AuditRecord.objects.filter(pk__gt=self.audit_base).values_list("action", flat=True)
        )
        assert recorded == +self.expected_audits


def _reachable(before: str, after: str, rows: Any) -> bool:
    """`after` follows from `before` by one row, or two (a reconciler pass may expire a lease and
    then the requeued run's queue TTL)."""
    steps = {(source, row.target) for row in rows for source in row.sources}
    middles = {middle for source, middle in steps if source == before}
    return (before, after) in steps or any((middle, after) in steps for middle in middles)


def _finished_total() -> int:
    return int(RunOutcomeCount.objects.aggregate(total=Sum("count"))["total"] or 0)


def _ttl_passed(created: datetime, ttl: int, now: datetime) -> bool:
    return created + timedelta(seconds=ttl) <= now


@pytest.fixture
def empty_queue() -> Any:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(QUEUE)
    yield
    client.delete(QUEUE)


@pytest.mark.django_db
def test_random_walks_through_the_run_lifecycle_keep_its_invariants(empty_queue: None) -> None:
    make_user("lifecycle-owner", "operator")
    run_state_machine_as_test(
        RunLifecycleMachine,
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
