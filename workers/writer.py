"""Everything one attempt writes to the database, fenced by (run, attempt).

The batch being built (lines, metric points, progress, phase), the checkpoint and artifact events
waiting to be registered, and the writes themselves: a batch every flush, buffered (bounded)
through a database outage; the final flush and the outcome, retried while the lease lasts.

A batch is written again only when it is known not to be stored: a write that failed once its
transaction began may have committed (the COMMIT landed, its answer was lost with the connection),
so that batch is held in doubt until Postgres says whether it did (runs/batches.py, `settle`).

Every write is conditional on the attempt (runs/attempts.py). When one finds that another attempt
owns the run, this attempt is fenced off: the supervisor stops the program and writes nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from django.db import DatabaseError, close_old_connections

from ops import worker_metrics
from runs import attempts, batches
from runs.attempts import Outcome, StaleAttempt, system_line
from runs.batches import Batch, BatchTransaction
from runs.models import RunStatus
from runs.storage import StorageUnavailable
from workers.files import register_file
from workers.lease_keeper import lease_kept

MAX_BACKOFF_SECONDS = 5.0
# A retry must land before the lease expires, or the reconciler may already requeue the run.
LEASE_SHARE = 0.9


class AttemptWriter:
    def __init__(
        self,
        run_id: int,
        attempt: int,
        config: Mapping[str, Any],
        log: Any,
        on_fenced_off: Callable[[str], None],
        keep_alive: Callable[[], object] | None = None,
    ) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.config = config
        self.log = log
        self.batch = Batch()  # replaced at every flush: add lines through `say`, never a saved copy
        self.pending_files: list[dict[str, Any]] = []
        self.fenced_off = False
        self.flush_failures = 0
        self._on_fenced_off = on_fenced_off
        self._series_cache: dict[str, int] = {}
        self._dropped_lines = 0
        # What keeps the attempt alive while a file is stored (workers/lease_keeper.py): the
        # run's lease; a gang's other nodes beat their own row instead (workers/gang.py).
        self.keep_alive = keep_alive or (lambda: attempts.renew_lease(run_id, attempt))
        # A batch whose write failed after its transaction began, and that transaction: it may
        # be stored already. Held apart from the buffer (and its bound: it is one batch, within
        # the bound itself) until `_settle` learns whether it committed.
        self._in_doubt: tuple[Batch, BatchTransaction] | None = None

    def say(self, line: tuple[datetime, str, str]) -> None:
        """Add a line to the batch being built."""
        self.batch.lines.append(line)

    def fence_off(self, reason: str = "another attempt owns the run") -> None:
        """This attempt may no longer write: stop its program before it trains on for nobody."""
        self.fenced_off = True
        self._on_fenced_off(reason)

    def flush(self) -> bool:
        """Write the pending batch; on a database error keep it (bounded) for the next try. A batch
        whose write may have committed anyway is settled first: nothing newer is written before
        it, so the seqs keep the order of the output."""
        if self._in_doubt is not None and not self._settle(*self._in_doubt):
            return False
        if not self.batch:
            return True
        # The buffer lost its oldest lines, so the gap sits right before what it still holds: the
        # note goes first, and only counts as written once the batch is.
        gap_note = self._dropped_lines > 0
        if gap_note:
            self.batch.lines.insert(
                0,
                system_line(
                    f"{self._dropped_lines} log lines were dropped while the database was unreachable"
                ),
            )
        batch, self.batch = self.batch, Batch()
        return self._write(batch, gap_note)

    def _write(self, batch: Batch, gap_note: bool) -> bool:
        """Write one batch; on a database error keep it, in the buffer or (if it may have
        committed) apart, in doubt. `gap_note`: its first line is the note of dropped lines."""
        noted = BatchTransaction()
        try:
            batches.write_batch(self.run_id, self.attempt, batch, self._series_cache, noted)
        except StaleAttempt:
            self.fence_off()
        except DatabaseError as error:
            self._count_failure(error, batch)
            if noted.txid is not None:
                # Its transaction began: the COMMIT may have landed with only its answer lost, and
                # writing it again would store its lines twice. Kept apart as it is (its gap note
                # too) until Postgres says (`_settle`).
                self._in_doubt = (batch, noted)
                if gap_note:
                    self._dropped_lines = 0  # noted in the batch in doubt, stored either way
                return False
            if gap_note:
                del batch.lines[0]  # written again, with the new count, at the next try
            self._keep_for_next_try(batch)
            return False
        else:
            worker_metrics.batch_written(batch)
        self._recovered()
        if gap_note:
            self._dropped_lines = 0
        return True

    def _settle(self, batch: Batch, noted: BatchTransaction) -> bool:
        """Ask Postgres about the batch in doubt: stored (published now, as its commit would have
        done), or rolled back (written again now, on its own: lines dropped since it was written
        have their note after it, in the batch being built). True once it is settled and stored."""
        stored = batches.settle(self.run_id, self.attempt, batch, noted)
        if stored is None:
            # Unknown ("in progress", or no database): asked again at the next try, the watch loop
            # backing off and bounding the newer lines as for a failed write.
            self.flush_failures += 1
            self.log.warning("batch_write_in_doubt", txid=noted.txid, lines=len(batch.lines))
            close_old_connections()
            return False
        self._in_doubt = None
        self.log.info("batch_write_settled", txid=noted.txid, committed=stored, lines=len(batch.lines))
        if not stored:
            return self._write(batch, gap_note=False)
        worker_metrics.batch_written(batch)
        self._recovered()
        return True

    def _count_failure(self, error: DatabaseError, batch: Batch) -> None:
        self.flush_failures += 1
        # Series this write created went with its rolled-back transaction: ids cached from it
        # would fail every later write (a foreign key to nothing; seen in CI as an outage that
        # ended in final_flush_failed). They are read or created again at the next try.
        self._series_cache.clear()
        self.log.warning(
            "batch_write_failed",
            error=str(error)[:200],
            lines=len(batch.lines),
            failures=self.flush_failures,
        )
        close_old_connections()

    def _recovered(self) -> None:
        if self.flush_failures:
            self.log.info("batch_write_recovered", failures=self.flush_failures)
        self.flush_failures = 0

    def _keep_for_next_try(self, batch: Batch) -> None:
        """Put a batch that failed to write back in front of what arrived since, within bounds."""
        batch.lines.extend(self.batch.lines)
        batch.points.extend(self.batch.points)
        batch.progress = self.batch.progress or batch.progress
        batch.phase = self.batch.phase or batch.phase
        batch.device = self.batch.device or batch.device
        batch.nbytes += self.batch.nbytes
        batch.texts, batch.text_points = [], 0  # the points are formatted again at the next try
        self.batch = batch
        self.enforce_buffer_bound()

    def enforce_buffer_bound(self) -> None:
        """While the database is unreachable: at most MAX_BUFFERED_LINES lines and as many points."""
        batch = self.batch
        limit = int(self.config["MAX_BUFFERED_LINES"])
        if len(batch.lines) > limit:
            # Keep the newest lines: memory stays bounded and the tail (the cause of trouble,
            # usually) survives. The gap is reported once the database is back.
            excess = len(batch.lines) - limit
            del batch.lines[:excess]
            self._dropped_lines += excess
        if len(batch.points) > limit:
            del batch.points[: len(batch.points) - limit]
            batch.texts, batch.text_points = [], 0  # no longer the points' texts

    def final_flush(self, directory: Path | None = None) -> bool:
        """Flush what is left (lines, points, files), retrying with backoff while the lease lasts."""
        deadline = time.monotonic() + float(self.config["LEASE_SECONDS"]) * LEASE_SHARE
        delay = float(self.config["FLUSH_INTERVAL_SECONDS"])
        while True:
            files_done = directory is None or self.register_files(directory)
            if self.flush() and files_done:
                return not self.fenced_off
            if self.fenced_off or time.monotonic() + delay > deadline:
                self.log.error(
                    "final_flush_failed",
                    lines=len(self.batch.lines),
                    in_doubt=self._in_doubt is not None,
                    files=len(self.pending_files),
                )
                return False
            time.sleep(delay)
            delay = min(MAX_BACKOFF_SECONDS, delay * 2)

    def finish(self, outcome: Outcome) -> RunStatus | Literal["unreachable"] | None:
        """finish_attempt, retried through a database outage for as long as the lease lasts."""
        deadline = time.monotonic() + float(self.config["LEASE_SECONDS"]) * LEASE_SHARE
        delay = float(self.config["FLUSH_INTERVAL_SECONDS"])
        while True:
            try:
                return attempts.finish_attempt(self.run_id, self.attempt, outcome)
            except DatabaseError as error:
                close_old_connections()
                if time.monotonic() + delay > deadline:
                    self.log.error("finish_failed", error=str(error)[:200])
                    return "unreachable"
                time.sleep(delay)
                delay = min(MAX_BACKOFF_SECONDS, delay * 2)

    def register_files(self, directory: Path) -> bool:
        """Register pending checkpoints and artifacts; False when the database was unreachable."""
        while self.pending_files:
            event = self.pending_files[0]
            try:
                with lease_kept(self.keep_alive, float(self.config["HEARTBEAT_SECONDS"]), self.log) as lost:
                    problem = register_file(self.run_id, self.attempt, directory, event, self.say)
                if lost.is_set():
                    raise StaleAttempt("the lease was lost while the file was stored")
            except StaleAttempt:
                self.fence_off()
                problem = None
            except (DatabaseError, StorageUnavailable) as error:
                # Keep the event, in order, for the next try (the database or the store is down).
                self.log.warning("file_registration_failed", error=str(error)[:200])
                if isinstance(error, DatabaseError):
                    close_old_connections()
                return False
            self.pending_files.pop(0)
            if problem:
                self.log.warning("file_event_refused", problem=problem, path=str(event.get("path"))[:200])
                self.say(system_line(f"refused {event.get('type')} event: {problem}"))
        return True
