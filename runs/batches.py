"""A supervisor's batch (log lines, metric points, progress) and its write: one transaction,
fenced by the attempt, its frames published once it committed.

A write whose connection is lost may have committed all the same: the COMMIT reached Postgres and
only its answer was lost. Written again, its lines would be stored twice (and its seqs reserved
twice). So the write notes its transaction's id as it begins (`BatchTransaction`), and a batch
whose write failed after that is `settle`d, Postgres asked whether it committed, before anyone
writes it again (workers/writer.py keeps it meanwhile). SQLite (standalone mode) runs in the
process: a failed write there was rolled back, and no id is noted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from ops.transactions import transaction_statuses
from runs import events
from runs.attempts import StaleAttempt
from runs.ingest import LogRow, PointText, insert_log_lines, write_batch_points
from runs.lifecycle import LIVE_STATUSES
from runs.models import Run, RunStatus


@dataclass
class Batch:
    """What a supervisor collected since its last flush."""

    lines: list[tuple[datetime, str, str]] = field(default_factory=list)  # ts, stream, line
    points: list[tuple[str, int, float | None, datetime]] = field(default_factory=list)
    progress: tuple[int, int | None] | None = None
    phase: str | None = None
    device: str | None = None
    nbytes: int = 0  # bytes of program output taken into it (the supervisor's batch bound)
    # The points pre-formatted for COPY by the events reader thread; used only while they cover
    # every point (text_points == len(points)), else the points are formatted at write time.
    texts: list[PointText] = field(default_factory=list)
    text_points: int = 0

    def __bool__(self) -> bool:
        return bool(self.lines or self.points or self.progress or self.phase or self.device)

    @property
    def rows(self) -> int:
        return len(self.lines) + len(self.points)


@dataclass
class BatchTransaction:
    """The transaction that writes one batch, noted as the write goes: once its id is known, a
    failed write may still have committed, and only Postgres can say (`settle`)."""

    txid: int | None = None  # Postgres's txid_current(); None: the write never began (or SQLite)
    first_seq: int = 0  # the first seq it reserved: the seqs its lines were stored under


def _reserve_seq(run_id: int, attempt: int, count: int, batch: Batch, noted: BatchTransaction) -> int:
    """Reserve `count` seqs under the fencing condition; returns the last seq reserved. On
    Postgres the same statement returns the transaction's id (no extra round trip): a connection
    lost before this answer came cannot have sent the COMMIT."""
    assignments = ["log_seq = log_seq + %s", "updated_at = %s"]
    values: list[Any] = [count, timezone.now()]
    if batch.progress is not None:
        assignments += ["progress_step = %s", "progress_total = %s"]
        values += list(batch.progress)
    if batch.phase is not None:
        assignments.append("phase = %s")
        values.append(batch.phase[:32])
    if batch.device is not None:
        assignments.append("device = %s")
        values.append(batch.device[:64])
    table = Run._meta.db_table
    live = sorted(LIVE_STATUSES)  # the fencing condition of `lifecycle.held_by`, in SQL
    returning = "log_seq, txid_current()" if connection.vendor == "postgresql" else "log_seq"
    placeholders = ", ".join(["%s"] * len(live))
    sql = (  # nosemgrep: raw-sql-string-formatting - the SET list is this function's own literals
        f"UPDATE {table} SET {', '.join(assignments)} "  # noqa: S608 - only our own column names
        f"WHERE id = %s AND attempt = %s AND status IN ({placeholders}) RETURNING {returning}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, run_id, attempt, *live])
        row = cursor.fetchone()
    if row is None:
        raise StaleAttempt(f"run {run_id} attempt {attempt} may no longer write")
    noted.txid = int(row[1]) if len(row) > 1 else None
    return int(row[0])


def _log_rows(batch: Batch, first_seq: int) -> list[LogRow]:
    return [(first_seq + i, ts, stream, line) for i, (ts, stream, line) in enumerate(batch.lines)]


def write_batch(
    run_id: int,
    attempt: int,
    batch: Batch,
    series_cache: dict[str, int],
    noted: BatchTransaction | None = None,
) -> tuple[int, int]:
    """Store a batch in one transaction and publish it once committed; returns (first, last) seq.
    `noted`, when given, learns the transaction's id and seqs as the write goes (for `settle`)."""
    noted = BatchTransaction() if noted is None else noted
    with transaction.atomic():
        last_seq = _reserve_seq(run_id, attempt, len(batch.lines), batch, noted)
        first_seq = noted.first_seq = last_seq - len(batch.lines) + 1
        log_rows = _log_rows(batch, first_seq)
        insert_log_lines(run_id, log_rows)
        if batch.points:
            texts = batch.texts if batch.text_points == len(batch.points) else None
            # A resumed attempt re-reports the steps after its checkpoint: merge, not append.
            write_batch_points(run_id, batch.points, texts, series_cache, may_repeat=attempt > 1)
        transaction.on_commit(lambda: publish_batch(run_id, attempt, batch, log_rows))
    return first_seq, last_seq


def publish_batch(run_id: int, attempt: int, batch: Batch, log_rows: list[LogRow]) -> None:
    """The frames of a committed batch: its lines, its points, and its progress or phase."""
    frames: list[events.Frame] = []
    if log_rows:
        frames.append(events.log_frame(log_rows))
    if batch.points:
        frames.append(events.metric_frame(batch.points))
    if batch.progress is not None or batch.phase is not None:
        frames.append(
            {
                "type": "status",
                "status": RunStatus.RUNNING.value,
                "attempt": attempt,
                "phase": batch.phase or "",
                "progress_step": batch.progress[0] if batch.progress else None,
                "progress_total": batch.progress[1] if batch.progress else None,
            }
        )
    events.publish(run_id, *frames)  # one message for the batch's frames


def settle(run_id: int, attempt: int, batch: Batch, noted: BatchTransaction) -> bool | None:
    """Whether a batch whose write failed after its transaction began was stored after all:
    True (committed: its frames are published now, as its commit would have done), False
    (aborted: nothing of it was stored, write it again), None (not known yet: "in progress", too
    old to tell, or the question itself failed; ask again later, never write it again on a guess).
    """
    if noted.txid is None:
        return False  # it never began: nothing of it can have been stored
    connection.close()  # asked on a fresh connection, never on the one that was lost
    try:
        status = transaction_statuses([noted.txid]).get(noted.txid)
    except DatabaseError:
        connection.close()
        return None
    if status == "committed":
        publish_batch(run_id, attempt, batch, _log_rows(batch, noted.first_seq))
        return True
    return False if status == "aborted" else None
