"""The loop that watches a running program until it is gone.

One thread does everything, in turn: take the queued output into the batch, flush it, renew the
lease every HEARTBEAT and read the run's status every second in between (cancel → SIGTERM), and
enforce the worker's shutdown and the run's maximum duration, with SIGKILL after the grace period,
and, while the program runs, add a system-metrics sample to the batch when one is due
(workers/sampling.py). One thread, so the batch needs no lock.

When to flush (adaptive): a batch is written at once when the queue is drained and nothing was
flushed for IDLE_FLUSH_SECONDS (an idle run's line reaches the websocket in one transaction's
time); under load output coalesces until the batch is full (MAX_BATCH_ROWS rows of every kind, or
MAX_BATCH_BYTES of program output) or FLUSH_INTERVAL passes. A full batch is not added to: the
loop flushes it first, so the queue fills and the program waits (backpressure, workers/streams.py).
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from django.db import DatabaseError, close_old_connections

from fleet.gang import GangBroken
from runs import attempts
from runs.attempts import Claim, StaleAttempt, system_line
from runs.models import RunStatus
from workers.ingest import Ingest
from workers.process import READER_COUNT, ProgramProcess
from workers.sampling import SystemSampler
from workers.streams import Chunk
from workers.writer import MAX_BACKOFF_SECONDS, AttemptWriter

# Rows (log lines + metric points) and bytes of program output in one batch: one transaction and
# one websocket frame of each kind. ~20k rows is where COPY's per-batch overhead stops mattering.
MAX_BATCH_ROWS = 20_000
MAX_BATCH_BYTES = 4 * 1024 * 1024
IDLE_FLUSH_SECONDS = 0.025
STATUS_POLL_SECONDS = 1.0
# After the program exits, children that kept its pipes open get this long before the group is
# killed, and the readers this long to reach end of file before the loop stops waiting for them.
PIPES_GRACE_SECONDS = 2.0
PIPES_GIVE_UP_SECONDS = 5.0


class Watch:
    def __init__(
        self,
        claim: Claim,
        directory: Path,
        chunks: queue.Queue[Chunk],
        *,
        process: ProgramProcess,
        ingest: Ingest,
        writer: AttemptWriter,
        config: Mapping[str, Any],
        shutdown: threading.Event,
        log: Any,
        sampler: SystemSampler | None = None,
        beat: Callable[[], str] | None = None,
    ) -> None:
        self.claim = claim
        self.directory = directory
        self.chunks = chunks
        self.process = process
        self.ingest = ingest
        self.writer = writer
        self.shutdown = shutdown
        self.log = log
        # System metrics of the program's group (workers/sampling.py); None: disabled.
        self.sampler = sampler
        self.timed_out = False
        # The heartbeat: renew the lease and return the run's status (workers/gang.py for a gang).
        self.beat = beat or (lambda: attempts.renew_lease(claim.run_id, claim.attempt))
        self.gang_failure: str | None = None  # another node of the gang is gone or failed
        self.flush_every = float(config["FLUSH_INTERVAL_SECONDS"])
        self.heartbeat_every = float(config["HEARTBEAT_SECONDS"])
        self.lease_seconds = float(config["LEASE_SECONDS"])
        self.grace = float(config["CANCEL_GRACE_SECONDS"])
        self._open_streams = READER_COUNT
        now = time.monotonic()
        self._started = now
        self._last_renewal = now
        self._next_flush = now + self.flush_every
        self._last_flush = now - IDLE_FLUSH_SECONDS
        self._drained = False
        self._next_heartbeat = now + self.heartbeat_every
        self._next_status_poll = now + STATUS_POLL_SECONDS

    def run(self) -> int:
        """Watch until the program and its pipes are done; the program's exit code."""
        assert self.process.popen is not None
        exited_at: float | None = None
        while True:
            self._take_output()
            now = time.monotonic()
            self._flush_if_due(now)
            self._poll_run_if_due(now)
            self._enforce_limits(now)
            if exited_at is None and self._exited():
                exited_at = now
            if exited_at is None and self.sampler is not None:
                # Only while the program runs: an exited group has nothing left to measure.
                self.sampler.sample_if_due(now, self.writer.batch)
            if exited_at is not None and self._done_after_exit(now - exited_at):
                break
        self._drain()
        return self.process.popen.returncode

    def _exited(self) -> bool:
        """Whether the program (its guardian) has exited. Once its pipes are closed it is about to:
        wait for it briefly rather than until the loop's next timer (up to a flush interval)."""
        assert self.process.popen is not None
        if self._open_streams == 0:
            try:
                self.process.popen.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                return False
        return self.process.popen.poll() is not None

    def _drain(self) -> None:
        """Take every line still queued once the program is gone, in bounded batches: a full
        queue of multi-point lines parses into far more memory than its bytes."""
        while True:
            try:
                chunk = self.chunks.get_nowait()
            except queue.Empty:
                return
            if chunk.data is not None:
                self.ingest.take(chunk)
            if self._batch_full():
                if self.writer.flush_failures:
                    self.writer.enforce_buffer_bound()
                else:
                    self.writer.flush()

    def _batch_full(self) -> bool:
        batch = self.writer.batch
        return batch.rows >= MAX_BATCH_ROWS or batch.nbytes >= MAX_BATCH_BYTES

    def _take_output(self) -> None:
        """Wait for output until the next timer, then take what is queued (up to a full batch)."""
        self._drained = False
        writing = not self.writer.flush_failures
        if writing and self._batch_full():
            return  # flushed next, before anything more is read: the backpressure
        deadline = min(self._next_flush, self._next_status_poll)
        if writing and self.writer.batch:
            deadline = min(deadline, self._last_flush + IDLE_FLUSH_SECONDS)
        timeout = max(0.0, deadline - time.monotonic())
        try:
            self._take(self.chunks.get(timeout=timeout))
            while not self._batch_full():
                self._take(self.chunks.get_nowait())
        except queue.Empty:
            self._drained = True
        if not writing:
            # The database is down: the buffer keeps its own bound (MAX_BUFFERED_LINES), trimmed
            # as output arrives rather than only at the next failed try.
            self.writer.enforce_buffer_bound()

    def _take(self, chunk: Chunk) -> None:
        if chunk.data is None:
            self._open_streams -= 1
        else:
            self.ingest.take(chunk)

    def _flush_if_due(self, now: float) -> None:
        writing = not self.writer.flush_failures
        full = writing and self._batch_full()
        # Little pending, the queue empty and nothing written for a moment: write it now.
        idle = writing and self._drained and now - self._last_flush >= IDLE_FLUSH_SECONDS
        if now < self._next_flush and not full and not (idle and self.writer.batch):
            return
        if self.writer.batch:
            self._last_flush = now
        self.writer.flush()
        self.writer.register_files(self.directory)
        # After a failed write, back off (up to 5 s) instead of hammering a sick database.
        self._next_flush = now + min(MAX_BACKOFF_SECONDS, self.flush_every * 2**self.writer.flush_failures)

    def _poll_run_if_due(self, now: float) -> None:
        """Renew the lease when due, else read the run's status; both say whether it is cancelling."""
        if now < self._next_heartbeat and now < self._next_status_poll:
            return
        try:
            if now >= self._next_heartbeat:
                status = self.beat()
                self._last_renewal = now
                self._next_heartbeat = now + self.heartbeat_every
            else:
                status = attempts.current_status(self.claim.run_id, self.claim.attempt)
            if status in (RunStatus.CANCELLING, RunStatus.PREEMPTED):
                # Preempted: stopped like a cancel (SIGTERM, a final checkpoint), queued again after.
                preempted = status == RunStatus.PREEMPTED
                self._terminate("preempted by a higher-priority run" if preempted else "cancel requested")
        except StaleAttempt:
            self.writer.fence_off()
        except GangBroken as broken:  # raised after the lease was renewed
            self._last_renewal, self._next_heartbeat = now, now + self.heartbeat_every
            if self.gang_failure is None:
                self.gang_failure = str(broken)
                self._terminate(f"the run's gang broke: {broken}")
        except DatabaseError as error:
            self.log.warning("heartbeat_failed", error=str(error)[:200])
            close_old_connections()
            if now - self._last_renewal > self.lease_seconds * 0.9:
                # We can no longer prove we own the run: stop before someone else starts.
                self.writer.fence_off("could not renew the lease in time")
        self._next_status_poll = now + STATUS_POLL_SECONDS

    def _enforce_limits(self, now: float) -> None:
        if self.shutdown.is_set():
            self._terminate("worker shutting down")
        limit = self.claim.max_duration_seconds
        if limit and not self.timed_out and now - self._started > limit:
            self.timed_out = True
            self._terminate(f"maximum duration of {limit} s reached")
        self.process.escalate_if_needed(self.grace)

    def _terminate(self, reason: str) -> None:
        if self.process.terminate(reason):
            self.writer.say(system_line(f"stopping the program: {reason}"))

    def _done_after_exit(self, since_exit: float) -> bool:
        """Once the program exited: whether its pipes are done (or waited for long enough)."""
        if self._open_streams == 0 or since_exit > PIPES_GRACE_SECONDS:
            # The program is gone; children that kept its pipes open are ended with the group.
            self.process.end_group()
            return self._open_streams == 0 or since_exit > PIPES_GIVE_UP_SECONDS
        return False
