"""The supervisor of one run attempt: it claims the run, starts the training program, streams
what the program prints and reports into the database, keeps the lease and ends the process.

It never imports torch: the training program is a separate process speaking the JSON-lines
protocol of docs/architecture.md, so the worker stays small and a crash of the program cannot take
the worker with it.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from datetime import datetime
from pathlib import Path

import structlog
from django.conf import settings
from django.utils import timezone

from fleet import gang as fleet_gang
from fleet.admission import NodeSeat, Seat
from ops import worker_metrics
from redaction import Redactor, registry
from runs import attempts
from runs.attempts import Claim, Outcome, system_line
from runs.models import ErrorKind, RunKind, RunStatus
from runs.programs import Program, get_program
from runs.selectors import dispatch_record, launch_record
from runs.storage import StorageUnavailable, run_dir
from workers.code import program_for, unpack_snapshot
from workers.failures import classify_exit
from workers.gang import keep_alive, lease_beat, open_gang, others_failed, wait_to_join
from workers.ingest import Ingest
from workers.launch import GangPart, Launch
from workers.lease_keeper import lease_kept
from workers.preparation import choose_checkpoint, resolve_run_secrets, stage_run_dataset
from workers.process import ProgramProcess
from workers.registry import active_supervisors
from workers.sampling import SystemSampler
from workers.streams import Chunk, ChunkQueue
from workers.watch import Watch
from workers.writer import AttemptWriter

log = structlog.get_logger(__name__)

# Lines waiting between the reader threads and the loop: enough for any burst between two
# flushes; a full queue (in lines or bytes: workers/streams.py) blocks the readers (so the
# program's pipes), never drops lines.
CHUNK_QUEUE_SIZE = 50_000


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Supervisor:
    """One attempt of one run, from the claim to the recorded outcome.

    The parts, built once the claim names the attempt: `ProgramProcess` (workers/process.py)
    starts and ends the program, `Ingest` (workers/ingest.py) turns its output into the batch,
    `AttemptWriter` (workers/writer.py) writes it, fenced by the attempt, and `Watch`
    (workers/watch.py) runs the loop until the program is gone.
    """

    def __init__(self, run_id: int, *, worker: str | None = None, seat: Seat | None = None) -> None:
        self.run_id = run_id
        self.worker = worker or worker_name()
        # The fleet worker this supervisor runs on; None (a direct call): no reservation check.
        self.seat = seat
        self.config = settings.CONTROLPLANE
        self._chunks: queue.Queue[Chunk] = ChunkQueue(max_chunks=CHUNK_QUEUE_SIZE)
        self._shutdown = threading.Event()
        self._redaction: int | None = None
        self.log = log.bind(run_id=run_id)
        # Built by _begin, once the claim names the attempt.
        self._process: ProgramProcess
        self._ingest: Ingest
        self._writer: AttemptWriter
        self._launched_at: datetime  # set once the program started (the system metrics' origin)
        self._gang: GangPart | None = None  # this worker's node of a multi-node run

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> str:
        """Supervise one attempt; returns what happened (for logs and tests)."""
        node = self.seat.node(self.run_id) if self.seat else None
        claim = self._claim(node)
        if claim is None:
            self.log.info("run_not_claimed", reason="not queued (duplicate delivery or cancelled)")
            return "not_claimed"
        self._begin(claim)
        active_supervisors.add(self)
        try:
            return self._run_claimed(claim)
        finally:
            active_supervisors.discard(self)
            if self._redaction is not None:
                registry.discard(self._redaction)
            worker_metrics.supervision_ended(self.run_id)
            self._process.end_group()

    def _claim(self, node: NodeSeat | None) -> Claim | None:
        """Claim the run; of a gang (fleet/gang.py), node 0 claims it and publishes the
        rendezvous, and every other node joins the attempt node 0 opened."""
        if node is not None and node.rank > 0 and self.seat is not None:
            joined = wait_to_join(self.run_id, self.seat, node, self._shutdown)
            if joined is None:
                return None
            self._gang = joined[1]
            return joined[0]
        claim = attempts.claim_run(self.run_id, self.worker, admitted=self.seat.admits if self.seat else None)
        if claim is not None and node is not None and self.seat is not None:
            self._gang = open_gang(claim, node, self.seat.worker_name)
        return claim

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def _begin(self, claim: Claim) -> None:
        """Bind the attempt to every log line of this thread, and build the attempt's parts."""
        structlog.contextvars.bind_contextvars(run_id=self.run_id, attempt=claim.attempt)
        if claim.request_id and not structlog.contextvars.get_contextvars().get("request_id"):
            # A retry dispatched by the reconciler carries no request id: keep the launch's.
            structlog.contextvars.bind_contextvars(request_id=claim.request_id)
        # The parts log through this logger: every line of the attempt names the supervisor.
        self.log = log.bind(run_id=self.run_id, attempt=claim.attempt)
        self._process = ProgramProcess(self.log)
        self._writer = AttemptWriter(
            self.run_id,
            claim.attempt,
            self.config,
            self.log,
            on_fenced_off=self._process.kill,
            keep_alive=keep_alive(claim, self._gang),
        )
        self._ingest = Ingest(self.run_id, self._writer, self.log)

    def _run_claimed(self, claim: Claim) -> str:
        # Retired since the launch: runs already launched still run (runs/catalog.py).
        program = (
            program_for(claim)
            if claim.kind == RunKind.CODE
            else get_program(claim.program, include_retired=True)
        )
        if program is None:
            outcome = Outcome(
                RunStatus.FAILED,
                error_kind=ErrorKind.CONFIG,
                error_code="unknown_program",
                error_message=f"program {claim.program!r} is no longer registered on this worker",
            )
            attempts.finish_attempt(self.run_id, claim.attempt, outcome)
            return "failed"
        secrets, refused = resolve_run_secrets(claim)
        if refused is not None:
            return self._end_before_start(claim, refused)
        self._mask(secrets)
        launch = self._prepare(program, claim, secrets)
        if isinstance(launch, Outcome):
            return self._end_before_start(claim, launch)
        try:
            self._start(launch)
        except OSError as error:
            outcome = Outcome(
                RunStatus.FAILED,
                error_kind=ErrorKind.CONFIG,
                error_code="cannot_start",
                error_message=f"could not start {program.command[0]!r}: {error.strerror or error}",
            )
            self._writer.say(system_line(outcome.error_message))
            self._writer.flush()
            attempts.finish_attempt(self.run_id, claim.attempt, outcome)
            return "failed"
        return self._supervise(claim, launch)

    def _end_before_start(self, claim: Claim, outcome: Outcome) -> str:
        """The attempt ends before its program starts: say why in its log, then record it."""
        self._writer.say(system_line(outcome.error_message))
        self._writer.final_flush()
        return str(attempts.finish_attempt(self.run_id, claim.attempt, outcome))

    def _mask(self, secrets: dict[str, str]) -> None:
        if not secrets:
            return
        self._ingest.redactor = Redactor(secrets.values())
        # Every structlog line of this process is masked too, whatever code logs it.
        self._redaction = registry.add(secrets.values())

    # -- before the program starts ---------------------------------------------------------

    def _prepare(self, program: Program, claim: Claim, secrets: dict[str, str]) -> Launch | Outcome:
        """Write params.json, choose the checkpoint and stage the dataset; an Outcome on failure."""
        directory = run_dir(self.run_id)
        directory.mkdir(parents=True, exist_ok=True)
        # A code run's files first: the control plane's own (params.json) are written over them.
        if claim.kind == RunKind.CODE and (unpacked := unpack_snapshot(claim, directory, self._writer.say)):
            return unpacked
        params_file = directory / "params.json"
        params_file.write_text(json.dumps(claim.params, indent=2, sort_keys=True))
        say = self._writer.say
        resume_from = self._resume_point(claim, directory) if claim.attempt > 1 else None
        if isinstance(resume_from, Outcome):
            return resume_from
        if isinstance(claim.params.get("dataset_url"), str) and claim.params["dataset_url"]:
            # Shown (flushed) before a download that may take a while.
            say(system_line(f"staging the dataset from {str(claim.params['dataset_url'])[:200]}"))
            self._writer.flush()
        heartbeat = float(self.config["HEARTBEAT_SECONDS"])
        dataset, failure = stage_run_dataset(self.run_id, claim, directory, heartbeat, say)
        if failure is not None:
            return failure
        gpus = self.seat.gpus(self.run_id) if self.seat else None
        return Launch(
            self.run_id,
            program,
            claim,
            directory,
            params_file,
            resume_from,
            dataset,
            secrets,
            gpus,
            self._gang,
        )

    def _start(self, launch: Launch) -> None:
        self._process.start(
            launch, self._chunks, int(self.config["MAX_LOG_LINE_BYTES"]), self._ingest.parse_event
        )
        assert self._process.popen is not None
        claim, program = launch.claim, launch.program
        command = " ".join(launch.argv())  # torchrun's own line, for a torchrun program
        self._writer.say(system_line(f"attempt {claim.attempt} started on {self.worker}: {command}"))
        self.log.info("process_started", pid=self._process.popen.pid, program=program.name)
        worker_metrics.process_started(self.run_id, program.name, *dispatch_record(self.run_id))
        record = launch_record(self.run_id)
        self._launched_at = record.created_at if record else timezone.now()
        if record is not None and claim.attempt == 1 and (self._gang is None or self._gang.rank == 0):
            # A run's wait, counted once: by node 0 of a gang.
            worker_metrics.first_attempt_started(record.pool, record.priority, record.created_at)

    # -- while it runs, and after ----------------------------------------------------------

    def _supervise(self, claim: Claim, launch: Launch) -> str:
        directory = launch.directory
        watch = Watch(
            claim,
            directory,
            self._chunks,
            process=self._process,
            ingest=self._ingest,
            writer=self._writer,
            config=self.config,
            shutdown=self._shutdown,
            log=self.log,
            sampler=self._sampler(launch),
            beat=lease_beat(claim, self._gang),
        )
        exit_code = watch.run()
        if self._writer.fenced_off:
            self.log.warning("attempt_abandoned", reason="lease lost or run taken by another attempt")
            return "abandoned"
        gang = self._gang
        where = f" on node {gang.rank}" if gang else ""
        self._writer.say(system_line(f"process exited with code {exit_code}{where}"))
        if gang is not None and gang.rank > 0:
            return self._end_node(claim, gang, exit_code)
        outcome = self._outcome(claim, exit_code, timed_out=watch.timed_out)
        broken = watch.gang_failure  # the watch stopped the program for it
        if broken is None and gang is not None and outcome.status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            # The wait for the other nodes' ends may outlast the lease: kept alive meanwhile.
            with lease_kept(self._writer.keep_alive, float(self.config["HEARTBEAT_SECONDS"]), self.log):
                broken = others_failed(claim, gang)
        if broken is not None:
            # The whole gang's attempt ends: failed as infrastructure, so retried where it may be.
            message = f"the run's gang broke: {broken}"
            outcome = Outcome(RunStatus.FAILED, exit_code, ErrorKind.INFRASTRUCTURE, "node_lost", message)
        if not self._writer.final_flush(directory):
            # The lease will expire and the reconciler will conclude the attempt.
            return "abandoned"
        status = self._writer.finish(outcome)
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

    def _resume_point(self, claim: Claim, directory: Path) -> str | Outcome | None:
        """The checkpoint a later attempt resumes from (None: from scratch), or why it cannot start.
        A gang's node that cannot read the checkpoint node 0 resumes from must not train from
        scratch beside it: the attempt fails, saying what the nodes need."""
        try:
            resume_from = choose_checkpoint(self.run_id, claim.attempt, directory, self._writer.say, self.log)
        except StorageUnavailable as error:  # transient: the attempt is retried later
            message = f"the checkpoint store is unavailable: {error}"
            return Outcome(RunStatus.FAILED, None, ErrorKind.INFRASTRUCTURE, "storage_unavailable", message)
        gang = self._gang
        if (
            resume_from is None
            and gang is not None
            and gang.rank > 0
            and attempts.resume_candidates(self.run_id)
        ):
            message = (
                f"node {gang.rank} cannot read any checkpoint of the run: the nodes of a multi-node run "
                "need one store (CONTROLPLANE_STORAGE_URL=s3://... or a shared volume)"
            )
            return Outcome(RunStatus.FAILED, None, ErrorKind.CONFIG, "checkpoints_not_shared", message)
        return resume_from

    def _end_node(self, claim: Claim, gang: GangPart, exit_code: int) -> str:
        """A node other than 0: its lines flushed and its end reported; node 0 records the run."""
        self._writer.final_flush()
        fleet_gang.report_exit(self.run_id, claim.attempt, gang.rank, exit_code)
        self.log.info("gang_node_finished", node_rank=gang.rank, exit_code=exit_code)
        return "node_finished"

    def _sampler(self, launch: Launch) -> SystemSampler | None:
        """System metrics of the program's process group (the guardian leads it) and its GPUs."""
        assert self._process.popen is not None
        return SystemSampler.for_program(
            self._process.popen.pid,
            every=float(self.config["SYSTEM_METRICS_SECONDS"]),
            launched_at=self._launched_at,
            assigned=launch.gpus,
        )

    def _outcome(self, claim: Claim, exit_code: int, *, timed_out: bool) -> Outcome:
        if timed_out:
            limit = claim.max_duration_seconds
            return Outcome(
                RunStatus.FAILED,
                exit_code,
                ErrorKind.TIMEOUT,
                "max_duration",
                f"the attempt ran past its maximum duration of {limit} s and was stopped",
            )
        if self._process.terminated and not self._shutdown.is_set() and self._preempted(claim):
            message = "preempted to make room for a higher-priority run"
            return Outcome(RunStatus.PREEMPTED, exit_code, "", "preempted", message)
        if self._process.terminated and not self._shutdown.is_set():
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
        failure = classify_exit(exit_code, list(self._ingest.stderr_tail))
        return Outcome(RunStatus.FAILED, exit_code, failure.kind, failure.code, failure.message)

    def _preempted(self, claim: Claim) -> bool:
        try:
            return attempts.current_status(self.run_id, claim.attempt) == RunStatus.PREEMPTED
        except attempts.StaleAttempt:
            return False
