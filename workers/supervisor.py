"""The supervisor of one run attempt: it claims the run, starts the training program, streams
what the program prints and reports into the database, keeps the lease and ends the process.

It never imports torch: the training program is a separate process speaking the JSON-lines
protocol of docs/architecture.md, so the worker stays small and a crash of the program cannot take
the worker with it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from redaction import Redactor, registry
from ops import worker_metrics
from runs import attempts
from runs.attempts import Batch, Claim, Outcome, StaleAttempt, system_line
from runs.models import ErrorKind, LogStream, RunStatus
from runs.programs import Program, get_program
from runs.selectors import dispatch_record
from runs.safetensors_header import HeaderError, read_header
from runs.storage import hash_file, resolve_inside, run_dir, store_artifact
from workers.failures import classify_exit
from workers.preparation import choose_checkpoint, resolve_run_secrets, stage_run_dataset
from workers.protocol import MAX_EVENT_LINE_BYTES, apply_event
from workers.registry import active_supervisors
from workers.streams import Chunk, decode_line, read_lines

log = structlog.get_logger(__name__)

MAX_BATCH_LINES = 5_000
STDERR_TAIL_LINES = 50
PASSED_THROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Supervisor:
    def __init__(self, run_id: int, *, worker: str | None = None) -> None:
        self.run_id = run_id
        self.worker = worker or worker_name()
        self.config = settings.CONTROLPLANE
        self._chunks: queue.Queue[Chunk] = queue.Queue(maxsize=50_000)
        self._batch = Batch()
        self._series_cache: dict[str, int] = {}
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._pending_files: list[dict[str, Any]] = []
        self._shutdown = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._cancel_sent_at: float | None = None
        self._killed = False
        self._lost_lease = False
        self._timed_out = False
        self._max_duration: int | None = None
        self._lifeline: int | None = None
        self._flush_failures = 0
        self._dropped_lines = 0
        # The run's secret values: injected into its program only, and masked in everything it
        # prints or reports before that reaches the batch (so the database never holds them).
        self._secrets: dict[str, str] = {}
        self._redactor = Redactor()
        self._redaction: int | None = None
        self.log = log.bind(run_id=run_id)

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> str:
        """Supervise one attempt; returns what happened (for logs and tests)."""
        claim = attempts.claim_run(self.run_id, self.worker)
        if claim is None:
            self.log.info("run_not_claimed", reason="not queued (duplicate delivery or cancelled)")
            return "not_claimed"
        structlog.contextvars.bind_contextvars(run_id=self.run_id, attempt=claim.attempt)
        if claim.request_id and not structlog.contextvars.get_contextvars().get("request_id"):
            # A retry dispatched by the reconciler carries no request id: keep the launch's.
            structlog.contextvars.bind_contextvars(request_id=claim.request_id)
        self.log = log.bind(run_id=self.run_id, attempt=claim.attempt)
        active_supervisors.add(self)
        try:
            return self._run_claimed(claim)
        finally:
            active_supervisors.discard(self)
            if self._redaction is not None:
                registry.discard(self._redaction)
            worker_metrics.supervision_ended(self.run_id)
            self._end_process_group()

    def _say(self, line: tuple[datetime, str, str]) -> None:
        """Add a line to the batch being built (the batch object changes at every flush)."""
        self._batch.lines.append(line)

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def _run_claimed(self, claim: Claim) -> str:
        program = get_program(claim.program)
        if program is None:
            outcome = Outcome(
                RunStatus.FAILED,
                error_kind=ErrorKind.CONFIG,
                error_code="unknown_program",
                error_message=f"program {claim.program!r} is no longer registered on this worker",
            )
            attempts.finish_attempt(self.run_id, claim.attempt, outcome)
            return "failed"
        self._secrets, refused = resolve_run_secrets(claim)
        if refused is not None:
            self._batch.lines.append(system_line(refused.error_message))
            self._final_flush(claim)
            return str(attempts.finish_attempt(self.run_id, claim.attempt, refused))
        if self._secrets:
            self._redactor = Redactor(self._secrets.values())
            # Every structlog line of this process is masked too, whatever code logs it.
            self._redaction = registry.add(self._secrets.values())
        directory = run_dir(self.run_id)
        directory.mkdir(parents=True, exist_ok=True)
        params_file = directory / "params.json"
        params_file.write_text(json.dumps(claim.params, indent=2, sort_keys=True))
        resume_from = None
        if claim.attempt > 1:
            resume_from = choose_checkpoint(self.run_id, claim.attempt, directory, self._say, self.log)
        if isinstance(claim.params.get("dataset_url"), str) and claim.params["dataset_url"]:
            # Shown (flushed) before a download that may take a while.
            self._say(system_line(f"staging the dataset from {str(claim.params['dataset_url'])[:200]}"))
            self._flush(claim)
        dataset, failure = stage_run_dataset(
            self.run_id, claim, directory, float(self.config["HEARTBEAT_SECONDS"]), self._say
        )
        if failure is not None:
            self._batch.lines.append(system_line(failure.error_message))
            self._final_flush(claim)
            return str(attempts.finish_attempt(self.run_id, claim.attempt, failure))
        try:
            self._start(program, claim, directory, params_file, resume_from, dataset)
        except OSError as error:
            outcome = Outcome(
                RunStatus.FAILED,
                error_kind=ErrorKind.CONFIG,
                error_code="cannot_start",
                error_message=f"could not start {program.command[0]!r}: {error.strerror or error}",
            )
            self._batch.lines.append(system_line(outcome.error_message))
            self._flush(claim)
            attempts.finish_attempt(self.run_id, claim.attempt, outcome)
            return "failed"
        exit_code = self._watch(claim, directory)
        if self._lost_lease:
            self.log.warning("attempt_abandoned", reason="lease lost or run taken by another attempt")
            return "abandoned"
        outcome = self._outcome(exit_code)
        self._batch.lines.append(system_line(f"process exited with code {exit_code}"))
        if not self._final_flush(claim, directory):
            # The lease will expire and the reconciler will conclude the attempt.
            return "abandoned"
        status = self._finish(claim, outcome)
        if status is None or status == "unreachable":
            return "abandoned"
        self.log.info(
            "attempt_finished",
            status=outcome.status,
            next_status=status,
            exit_code=exit_code,
            error_kind=outcome.error_kind,
        )
        return str(status)

    def _environment(
        self, claim: Claim, directory: Path, params_file: Path, events_fd: int
    ) -> dict[str, str]:
        # A minimal environment: never the worker's own configuration (database URL, keys).
        env = {name: os.environ[name] for name in PASSED_THROUGH_ENV if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        env.update(
            {
                "PYTHONPATH": str(_SOURCE_ROOT),
                "PYTHONUNBUFFERED": "1",
                "CONTROLPLANE_RUN_ID": str(self.run_id),
                "CONTROLPLANE_RUN_DIR": str(directory),
                "CONTROLPLANE_PARAMS": str(params_file),
                "CONTROLPLANE_EVENTS_FD": str(events_fd),
                "CONTROLPLANE_REQUEST_ID": claim.request_id,
                "CONTROLPLANE_ATTEMPT": str(claim.attempt),
            }
        )
        return env

    def _start(
        self,
        program: Program,
        claim: Claim,
        directory: Path,
        params_file: Path,
        resume_from: str | None,
        dataset: str | None,
    ) -> None:
        read_fd, write_fd = os.pipe()
        # The lifeline: we keep its write end; when this process dies the guardian sees EOF and
        # ends the program's whole process group.
        lifeline_read, self._lifeline = os.pipe()
        try:
            env = self._environment(claim, directory, params_file, write_fd)
            for name, value in self._secrets.items():
                env.setdefault(name, value)  # never over the control plane's own variables
            if resume_from is not None:
                env["CONTROLPLANE_RESUME_FROM"] = resume_from
            if dataset is not None:
                env["CONTROLPLANE_DATASET_PATH"] = dataset
            env.update(program.env)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "workers.guardian", str(lifeline_read), "--", *program.command],
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(write_fd, lifeline_read),
                # Its own session and process group: cancel and shutdown signal the whole group,
                # so children the program forks end with it.
                start_new_session=True,
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            os.close(lifeline_read)
        limit = int(self.config["MAX_LOG_LINE_BYTES"])
        assert self._process.stdout is not None and self._process.stderr is not None
        readers = [
            (self._process.stdout, "stdout", limit),
            (self._process.stderr, "stderr", limit),
            (os.fdopen(read_fd, "rb"), "events", MAX_EVENT_LINE_BYTES),
        ]
        for stream, source, size in readers:
            threading.Thread(
                target=read_lines,
                args=(stream, source, self._chunks, size),
                name=f"run-{self.run_id}-{source}",
                daemon=True,
            ).start()
        command = " ".join(program.command)
        self._batch.lines.append(system_line(f"attempt {claim.attempt} started on {self.worker}: {command}"))
        self.log.info("process_started", pid=self._process.pid, program=program.name)
        worker_metrics.process_started(self.run_id, program.name, *dispatch_record(self.run_id))

    # -- the loop --------------------------------------------------------------------------

    def _watch(self, claim: Claim, directory: Path) -> int:
        assert self._process is not None
        open_streams = 3
        flush_every = float(self.config["FLUSH_INTERVAL_SECONDS"])
        heartbeat_every = float(self.config["HEARTBEAT_SECONDS"])
        lease_seconds = float(self.config["LEASE_SECONDS"])
        next_flush = time.monotonic() + flush_every
        next_heartbeat = time.monotonic() + heartbeat_every
        next_status_poll = time.monotonic() + 1.0
        last_renewal = time.monotonic()
        started = time.monotonic()
        self._max_duration = claim.max_duration_seconds
        exited_at: float | None = None
        while True:
            timeout = max(0.0, min(next_flush, next_status_poll) - time.monotonic())
            try:
                chunk = self._chunks.get(timeout=timeout)
                if chunk.data is None:
                    open_streams -= 1
                else:
                    self._take(chunk, directory)
                while len(self._batch.lines) < MAX_BATCH_LINES:
                    chunk = self._chunks.get_nowait()
                    if chunk.data is None:
                        open_streams -= 1
                    else:
                        self._take(chunk, directory)
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= next_flush or (len(self._batch.lines) >= MAX_BATCH_LINES and not self._flush_failures):
                self._flush(claim)
                self._register_files(claim, directory)
                # After a failed write, back off (up to 5 s) instead of hammering a sick database.
                next_flush = now + min(5.0, flush_every * 2**self._flush_failures)
            if now >= next_heartbeat or now >= next_status_poll:
                try:
                    if now >= next_heartbeat:
                        status = attempts.renew_lease(self.run_id, claim.attempt)
                        last_renewal = now
                        next_heartbeat = now + heartbeat_every
                    else:
                        status = attempts.current_status(self.run_id, claim.attempt)
                    if status == RunStatus.CANCELLING:
                        self._terminate("cancel requested")
                except StaleAttempt:
                    self._lost_lease = True
                    self._kill("another attempt owns the run")
                except DatabaseError as error:
                    self.log.warning("heartbeat_failed", error=str(error)[:200])
                    close_old_connections()
                    if now - last_renewal > lease_seconds * 0.9:
                        # We can no longer prove we own the run: stop before someone else starts.
                        self._lost_lease = True
                        self._kill("could not renew the lease in time")
                next_status_poll = now + 1.0
            if self._shutdown.is_set():
                self._terminate("worker shutting down")
            if self._max_duration and not self._timed_out and now - started > self._max_duration:
                self._timed_out = True
                self._terminate(f"maximum duration of {self._max_duration} s reached")
            self._escalate_if_needed()
            if exited_at is None and self._process.poll() is not None:
                exited_at = now
            if exited_at is not None and (open_streams == 0 or now - exited_at > 2.0):
                # The program is gone; children that kept its pipes open are ended with the group.
                self._end_process_group()
                if open_streams == 0 or now - exited_at > 5.0:
                    break
        self._drain(directory)
        return self._process.returncode

    def _drain(self, directory: Path) -> None:
        while True:
            try:
                chunk = self._chunks.get_nowait()
            except queue.Empty:
                return
            if chunk.data is not None:
                self._take(chunk, directory)

    def _take(self, chunk: Chunk, directory: Path) -> None:
        assert chunk.data is not None
        if chunk.source == "events":
            self._take_event(chunk.data, chunk.truncated)
            return
        text = self._redacted_line(chunk.data, chunk.truncated)
        if chunk.source == "stderr":
            self._stderr_tail.append(text)
        self._batch.lines.append((timezone.now(), LogStream(chunk.source).value, text))

    def _redacted_line(self, data: bytes, truncated: int) -> str:
        if not self._redactor:
            return decode_line(data, truncated)
        # Masked before the truncation note is added: a line cut inside a secret hides its head too.
        text = self._redactor.text(decode_line(data), cut=bool(truncated))
        return text + decode_line(b"", truncated) if truncated else text

    def _take_event(self, data: bytes, truncated: int) -> None:
        problem = None
        event: Any = None
        if truncated:
            problem = f"event line longer than {MAX_EVENT_LINE_BYTES} bytes"
        else:
            try:
                event = self._redactor.value(json.loads(data))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                problem = f"not JSON ({error.__class__.__name__})"
        if problem is None:
            problem = apply_event(event, self._batch, self._pending_files)
            worker_metrics.observe_event(self.run_id, event)
        if problem is not None:
            preview = self._redacted_line(data, truncated)[:200]
            self.log.warning("malformed_event_skipped", problem=problem, preview=preview)
            self._batch.lines.append(system_line(f"skipped a malformed event ({problem}): {preview}"))

    def _flush(self, claim: Claim) -> bool:
        """Write the pending batch; on a database error keep it (bounded) for the next try."""
        if not self._batch:
            return True
        # The buffer lost its oldest lines, so the gap sits right before what it still holds: the
        # note goes first, and only counts as written once the batch is.
        gap_note = self._dropped_lines > 0
        if gap_note:
            self._batch.lines.insert(
                0,
                system_line(
                    f"{self._dropped_lines} log lines were dropped while the database was unreachable"
                ),
            )
        batch, self._batch = self._batch, Batch()
        try:
            attempts.write_batch(self.run_id, claim.attempt, batch, self._series_cache)
            worker_metrics.batch_written(batch)
        except StaleAttempt:
            self._lost_lease = True
            self._kill("another attempt owns the run")
        except DatabaseError as error:
            self._flush_failures += 1
            self.log.warning(
                "batch_write_failed",
                error=str(error)[:200],
                lines=len(batch.lines),
                failures=self._flush_failures,
            )
            close_old_connections()
            if gap_note:
                del batch.lines[0]  # written again, with the new count, at the next try
            batch.lines.extend(self._batch.lines)
            batch.points.extend(self._batch.points)
            batch.progress = self._batch.progress or batch.progress
            batch.phase = self._batch.phase or batch.phase
            limit = int(self.config["MAX_BUFFERED_LINES"])
            if len(batch.lines) > limit:
                # Keep the newest lines: memory stays bounded and the tail (the cause of trouble,
                # usually) survives. The gap is reported once the database is back.
                excess = len(batch.lines) - limit
                del batch.lines[:excess]
                self._dropped_lines += excess
            if len(batch.points) > limit:
                del batch.points[: len(batch.points) - limit]
            self._batch = batch
            return False
        if self._flush_failures:
            self.log.info("batch_write_recovered", failures=self._flush_failures)
        self._flush_failures = 0
        self._dropped_lines = 0
        return True

    def _final_flush(self, claim: Claim, directory: Path | None = None) -> bool:
        """Flush what is left (lines, points, files), retrying with backoff while the lease lasts."""
        deadline = time.monotonic() + float(self.config["LEASE_SECONDS"]) * 0.9
        delay = float(self.config["FLUSH_INTERVAL_SECONDS"])
        while True:
            files_done = directory is None or self._register_files(claim, directory)
            if self._flush(claim) and files_done:
                return not self._lost_lease
            if self._lost_lease or time.monotonic() + delay > deadline:
                self.log.error(
                    "final_flush_failed", lines=len(self._batch.lines), files=len(self._pending_files)
                )
                return False
            time.sleep(delay)
            delay = min(5.0, delay * 2)

    def _finish(self, claim: Claim, outcome: Outcome) -> RunStatus | Literal["unreachable"] | None:
        """finish_attempt, retried through a database outage for as long as the lease lasts."""
        deadline = time.monotonic() + float(self.config["LEASE_SECONDS"]) * 0.9
        delay = float(self.config["FLUSH_INTERVAL_SECONDS"])
        while True:
            try:
                return attempts.finish_attempt(self.run_id, claim.attempt, outcome)
            except DatabaseError as error:
                close_old_connections()
                if time.monotonic() + delay > deadline:
                    self.log.error("finish_failed", error=str(error)[:200])
                    return "unreachable"
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    def _register_files(self, claim: Claim, directory: Path) -> bool:
        """Register pending checkpoints and artifacts; False when the database was unreachable."""
        while self._pending_files:
            event = self._pending_files[0]
            try:
                problem = self._register_file(claim, directory, event)
            except DatabaseError as error:
                # Keep the event, in order, for the next try.
                self.log.warning("file_registration_failed", error=str(error)[:200])
                close_old_connections()
                return False
            self._pending_files.pop(0)
            if problem:
                self.log.warning("file_event_refused", problem=problem, path=str(event.get("path"))[:200])
                self._batch.lines.append(system_line(f"refused {event.get('type')} event: {problem}"))
        return True

    def _register_file(self, claim: Claim, directory: Path, event: dict[str, Any]) -> str | None:
        relative = str(event["path"])
        path = resolve_inside(directory, relative)
        if path is None:
            return f"path {relative[:200]!r} is outside the run directory"
        if not path.is_file():
            return f"{relative[:200]!r} is not a file"
        try:
            if event["type"] == "checkpoint":
                size, sha256 = hash_file(path)
                attempts.register_checkpoint(
                    self.run_id,
                    claim.attempt,
                    int(event["step"]),
                    str(path.relative_to(directory.resolve())),
                    size,
                    sha256,
                )
                return None
            name = path.name
            kind = event.get("kind") if isinstance(event.get("kind"), str) else "file"
            storage_key, size, sha256 = store_artifact(self.run_id, claim.attempt, path, name)
            metadata: dict[str, Any] = {}
            if name.endswith(".safetensors"):
                try:
                    header = read_header(path)
                    metadata = {"safetensors": header.metadata, "parameters": header.parameters}
                except HeaderError as error:
                    metadata = {"header_error": str(error)}
            attempts.register_artifact(
                self.run_id,
                claim.attempt,
                name=name,
                kind=str(kind),
                size=size,
                sha256=sha256,
                storage_key=storage_key,
                metadata=metadata,
            )
            self._batch.lines.append(system_line(f"artifact {name} stored ({size} bytes, sha256 {sha256})"))
        except StaleAttempt:
            self._lost_lease = True
            self._kill("another attempt owns the run")
        except OSError as error:
            return f"could not read {relative[:200]!r}: {error.strerror or error}"
        return None

    # -- ending the process ----------------------------------------------------------------

    def _signal_group(self, signum: int) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    def _terminate(self, reason: str) -> None:
        if self._cancel_sent_at is not None or self._process is None:
            return
        self._cancel_sent_at = time.monotonic()
        self.log.info("process_terminating", reason=reason)
        self._batch.lines.append(system_line(f"stopping the program: {reason}"))
        self._signal_group(signal.SIGTERM)

    def _escalate_if_needed(self) -> None:
        grace = float(self.config["CANCEL_GRACE_SECONDS"])
        if (
            self._cancel_sent_at is not None
            and not self._killed
            and time.monotonic() - self._cancel_sent_at > grace
        ):
            self._kill(f"still running {grace:g} s after SIGTERM")

    def _kill(self, reason: str) -> None:
        if self._killed:
            return
        self._killed = True
        self.log.warning("process_killed", reason=reason)
        self._signal_group(signal.SIGKILL)

    def _end_process_group(self) -> None:
        self._signal_group(signal.SIGKILL)
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.log.error("process_did_not_exit", pid=self._process.pid)

    def _outcome(self, exit_code: int) -> Outcome:
        if self._timed_out:
            limit = self._max_duration
            return Outcome(
                RunStatus.FAILED,
                exit_code,
                ErrorKind.TIMEOUT,
                "max_duration",
                f"the attempt ran past its maximum duration of {limit} s and was stopped",
            )
        if self._cancel_sent_at is not None and not self._shutdown.is_set():
            return Outcome(
                RunStatus.CANCELLED, exit_code, ErrorKind.CANCELLED, "cancelled", "cancelled by a user"
            )
        if self._shutdown.is_set():
            return Outcome(
                RunStatus.FAILED,
                exit_code,
                ErrorKind.INFRASTRUCTURE,
                "worker_shutdown",
                "the worker shut down while the run was running",
            )
        if exit_code == 0:
            return Outcome(RunStatus.SUCCEEDED, exit_code)
        failure = classify_exit(exit_code, list(self._stderr_tail))
        return Outcome(RunStatus.FAILED, exit_code, failure.kind, failure.code, failure.message)
