"""workers/writer.py: a batch whose COMMIT reached Postgres but whose answer was lost is not written
again (the flake of the supervisor's final-flush outage test, forced here on purpose).

The loss is real, not simulated: Django's commit runs the real COMMIT, then this connection's
backend is terminated from another connection and the next exchange on it fails as the answer
would have (a connection-level `OperationalError`). The other cases: the backend killed just
before the COMMIT (Postgres rolled the batch back: it must be written again, no line lost), and a
transaction still open when the writer asks (in progress: neither stored nor written again until
Postgres can tell).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import OperationalError, connection, connections

from runs import batches
from runs.attempts import system_line
from runs.batches import Batch, BatchTransaction
from runs.models import LogLine, MetricPoint, Run
from tests.workers.test_writer import claimed, writer_for
from workers.writer import AttemptWriter

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="txid_status is Postgres's"),
]


@pytest.fixture(autouse=True)
def fast_retries(settings: Any) -> None:
    settings.CONTROLPLANE = {**settings.CONTROLPLANE, "FLUSH_INTERVAL_SECONDS": 0.01, "LEASE_SECONDS": 30.0}


def _terminate_and_wait(pid: int) -> None:
    """End a backend from another connection and wait until it is gone (its transaction settled)."""
    db = settings.DATABASES["default"]
    conninfo = (
        f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
    )
    with psycopg.connect(conninfo, autocommit=True) as control:
        control.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while control.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, "the terminated backend did not exit"
            time.sleep(0.01)


Outcome = Literal["committed", "aborted", "in progress"]


@contextmanager
def connection_lost_at_commit(outcome: Outcome) -> Iterator[list[Any]]:
    """The next COMMIT of this thread's connection fails with a lost connection, its transaction
    left `outcome`: committed (the real COMMIT landed, then the backend was terminated, so the
    answer is an error), aborted (terminated just before the COMMIT), or in progress (the backend
    lives on with the transaction open, the Django side cut off from it, as a connection whose
    answer is still on its way). Yields what it did: the psycopg connection it cut off, once."""
    backend: Any = type(connections["default"])  # Django's DatabaseWrapper for Postgres
    real_commit = backend._commit
    fired: list[Any] = []

    def commit(self: Any) -> None:
        if fired:
            real_commit(self)
            return
        fired.append(self.connection)
        if outcome == "in progress":
            self.connection = None  # the test holds it (and its open transaction) from here
            raise OperationalError("server closed the connection unexpectedly")
        if outcome == "committed":
            real_commit(self)
        _terminate_and_wait(self.connection.info.backend_pid)
        with self.wrap_database_errors:
            self.connection.execute("SELECT 1")  # the dead backend: a connection-level error
        raise AssertionError("the terminated backend still answered")

    backend._commit = commit
    try:
        yield fired
    finally:
        backend._commit = real_commit


def lines_of(run_id: int) -> list[tuple[int, str]]:
    return list(LogLine.objects.filter(run_id=run_id).order_by("seq").values_list("seq", "line"))


def say_lines(writer: AttemptWriter, first: int, count: int) -> None:
    for number in range(first, first + count):
        writer.say(system_line(f"line {number}"))


def assert_each_line_once_in_order(run_id: int, count: int) -> None:
    stored = lines_of(run_id)
    assert [line for _, line in stored] == [f"line {number}" for number in range(1, count + 1)]
    assert [seq for seq, _ in stored] == list(range(1, count + 1))
    assert Run.objects.get(pk=run_id).log_seq == count  # no seq block reserved twice


def test_a_batch_whose_commit_landed_but_whose_answer_was_lost_is_not_written_again(owner: User) -> None:
    claim = claimed(owner)
    writer = writer_for(claim, [])
    say_lines(writer, 1, 3)
    writer.batch.points.append(("loss", 1, 0.5, writer.batch.lines[0][0]))
    with connection_lost_at_commit("committed") as fired:
        assert writer.flush() is False  # the writer could not tell that its batch was stored
    assert fired
    say_lines(writer, 4, 2)  # the program goes on printing meanwhile

    assert writer.final_flush()
    assert_each_line_once_in_order(claim.run_id, 5)
    assert MetricPoint.objects.filter(series__run_id=claim.run_id).count() == 1
    assert writer.flush_failures == 0


def test_a_batch_whose_transaction_was_aborted_with_its_connection_is_written_again(owner: User) -> None:
    claim = claimed(owner)
    writer = writer_for(claim, [])
    say_lines(writer, 1, 3)
    with connection_lost_at_commit("aborted") as fired:
        assert writer.flush() is False
    assert fired
    assert not LogLine.objects.filter(run_id=claim.run_id).exists()  # Postgres rolled it back
    say_lines(writer, 4, 2)

    assert writer.final_flush()
    assert_each_line_once_in_order(claim.run_id, 5)


def lock_timeout(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """Execute wrapper: a write waits at most a second for a row lock."""
    if context["connection"].in_atomic_block and sql.lstrip().upper().startswith("UPDATE"):
        with context["cursor"].cursor.connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '1s'")
    return execute(sql, params, many, context)


def test_a_batch_is_not_written_again_while_its_transaction_is_in_progress(owner: User) -> None:
    claim = claimed(owner)
    writer = writer_for(claim, [])
    say_lines(writer, 1, 3)
    with connection_lost_at_commit("in progress") as fired:
        assert writer.flush() is False
    (cut_off,) = fired
    say_lines(writer, 4, 2)
    try:
        # Postgres cannot tell yet: the batch is neither stored nor written again, and the newer
        # lines wait behind it (their seqs follow its own). A write now would wait for the open
        # transaction's row lock: the lock timeout makes that a failure, not a hang.
        with connection.execute_wrapper(lock_timeout):
            assert writer.flush() is False
            assert writer.flush() is False
        assert not LogLine.objects.filter(run_id=claim.run_id).exists()
        assert writer.flush_failures >= 3
    finally:
        cut_off.commit()  # the COMMIT lands after all
        cut_off._pool.putconn(cut_off)  # back to the pool it came from, as Django returns one

    assert writer.final_flush()
    assert_each_line_once_in_order(claim.run_id, 5)


def test_a_write_that_never_began_is_aborted_and_an_unanswerable_question_leaves_it_in_doubt(
    owner: User,
) -> None:
    claim = claimed(owner)
    batch = Batch(lines=[system_line("line 1")])
    # No transaction id: the write failed before its UPDATE answered, so nothing can be stored.
    assert batches.settle(claim.run_id, claim.attempt, batch, BatchTransaction()) is False
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid_current()")
        (current,) = cursor.fetchone()
    # Postgres refuses to answer (a txid "in the future"): unknown, never taken for aborted.
    future = BatchTransaction(txid=int(current) + 1_000_000, first_seq=1)
    assert batches.settle(claim.run_id, claim.attempt, batch, future) is None
