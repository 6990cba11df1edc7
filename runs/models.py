from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    # The fleet scheduler asked a lower-priority run to make room: its program is stopping (a final
    # checkpoint); when it exits the run is queued again at its old place and resumes later.
    PREEMPTED = "preempted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    DEAD = "dead"


# How statuses group (live, terminal, ...) and which changes are allowed: runs/lifecycle/.


class ErrorKind(models.TextChoices):
    CONFIG = "config"
    DATA = "data"
    OOM = "oom"
    DEVICE = "device"
    INFRASTRUCTURE = "infrastructure"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    PROGRAM = "program"


class RunKind(models.TextChoices):
    """Where a run's code comes from; each kind is started (or not) by its own path."""

    # A registered program (built in, TOML seed or the catalog), run by a worker's supervisor.
    PROGRAM = "program", "program"
    # A code snapshot uploaded by the launcher, unpacked into the run directory by the worker.
    CODE = "code", "code"
    # Tracking mode: a script outside the control plane reports over HTTP; no worker runs it.
    EXTERNAL = "external", "external"


class CodeSnapshot(models.Model):
    """A user's code, content-addressed: the sha256 of its tar.gz archive is its key, so the same
    directory is stored (and sent) once. Stored in Postgres because web and worker hosts share no
    disk and every worker reads Postgres; a row is inserted whole, only after the archive was
    verified (runs/archives.py), so no half-uploaded snapshot is ever registered."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    size = models.BigIntegerField()  # of the archive
    unpacked_size = models.BigIntegerField()
    # [{"path": "train.py", "size": 1234, "sha256": "..."}, ...], sorted by path.
    files = models.JSONField(default=list)
    archive = models.BinaryField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="code_snapshots"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"snapshot {self.sha256[:12]}"


class Run(models.Model):
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=RunKind.choices, default=RunKind.PROGRAM)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs")
    # A code run's program is "code" (a name the program registry reserves), so lists and filters
    # need no special case; its snapshot and the command it runs there are the two fields below.
    program = models.CharField(max_length=64)
    params = models.JSONField(default=dict)
    snapshot = models.ForeignKey(
        CodeSnapshot, on_delete=models.PROTECT, null=True, blank=True, related_name="runs"
    )
    command = models.JSONField(default=list, blank=True)
    secrets = models.JSONField(default=list, blank=True)
    queue = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    # The attempt number is the fencing token: each claim bumps it and every write of a
    # supervisor names the attempt it holds, so a stale supervisor's writes match no row.
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # Limits: a queued run older than its TTL fails as `timeout`; a running attempt past its
    # maximum duration gets SIGTERM (a final checkpoint), then SIGKILL after the grace period.
    queue_ttl_seconds = models.PositiveIntegerField(null=True, blank=True)
    max_duration_seconds = models.PositiveIntegerField(null=True, blank=True)
    # A transient failure is retried after a backoff: the reconciler dispatches it once due.
    not_before = models.DateTimeField(null=True, blank=True)
    dispatch_count = models.PositiveIntegerField(default=0)
    discarded_at = models.DateTimeField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    # Tracking mode: the number of the last report batch applied (runs/tracking.py), so a batch
    # sent again after a lost response is recognised and not applied twice.
    report_seq = models.BigIntegerField(default=0)

    # What the run asks of the fleet (fleet/): {"pool": str, "gpus": int, "nodes": int}; the
    # scheduler admits queued runs by priority (0-100, higher first, aged), quota and best fit.
    resources = models.JSONField(default=dict, blank=True)
    priority = models.PositiveSmallIntegerField(default=50)
    preemptible = models.BooleanField(default=True)
    preempt_count = models.PositiveSmallIntegerField(default=0)
    # Why a queued run is not placed yet, in words ("needs 8 GPUs; the largest a100 worker has 4");
    # empty when it waits only for its turn (its position is counted when read).
    waiting_reason = models.CharField(max_length=200, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    worker = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    # The last log seq handed out; the supervisor reserves a block per batch in the same UPDATE
    # that checks its fencing token, so seq stays contiguous across attempts.
    log_seq = models.BigIntegerField(default=0)
    phase = models.CharField(max_length=32, blank=True)
    progress_step = models.BigIntegerField(null=True, blank=True)
    progress_total = models.BigIntegerField(null=True, blank=True)
    device = models.CharField(max_length=64, blank=True)

    exit_code = models.IntegerField(null=True, blank=True)
    error_kind = models.CharField(max_length=16, choices=ErrorKind.choices, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "-id"], name="run_status_id"),
            models.Index(fields=["owner", "-id"], name="run_owner_id"),
            models.Index(
                fields=["lease_expires_at"],
                name="run_live_lease",
                condition=models.Q(status__in=["running", "cancelling"]),
            ),
            models.Index(
                fields=["created_at"], name="run_queued_created", condition=models.Q(status="queued")
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.name})"


class RunAttempt(models.Model):
    """One attempt at a run: who ran it, from which checkpoint, and how it ended."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    worker = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    resumed_from_step = models.BigIntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    error_kind = models.CharField(max_length=16, choices=ErrorKind.choices, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "number"], name="attempt_run_number")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.number}"


class LogStream(models.TextChoices):
    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"


class LogLine(models.Model):
    # (run, seq) is the key: the primary-key index serves "lines after N" directly and no
    # surrogate id costs 8 bytes and a second index per line.
    pk = models.CompositePrimaryKey("run", "seq")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_lines", db_index=False)
    seq = models.BigIntegerField()
    ts = models.DateTimeField()
    stream = models.CharField(max_length=6, choices=LogStream.choices)
    line = models.TextField()

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq}"


class MetricSeries(models.Model):
    """One metric key of one run; points refer to it so the key text is stored once."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_series")
    key = models.CharField(max_length=200)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="metric_series_run_key")]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.key}"


class MetricPoint(models.Model):
    # One value per (series, step): a step reported again after a resume replaces the value.
    pk = models.CompositePrimaryKey("series", "step")
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="points", db_index=False)
    step = models.BigIntegerField()
    value = models.FloatField(null=True)
    ts = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.series_id}@{self.step}"


class MetricRollup(models.Model):
    """Aggregates of one series over the aligned bucket of 2**level steps `bucket` (step >> level),
    kept in the points' transaction (runs/rollups.py): charts read these, never the points."""

    pk = models.CompositePrimaryKey("series", "level", "bucket")
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="rollups", db_index=False)
    level = models.SmallIntegerField()
    bucket = models.BigIntegerField()
    min = models.FloatField(null=True)  # None: every value in the bucket was null (non-finite)
    min_step = models.BigIntegerField(null=True)
    max = models.FloatField(null=True)
    max_step = models.BigIntegerField(null=True)
    last = models.FloatField(null=True)  # the value at the bucket's highest step
    last_step = models.BigIntegerField()
    first_step = models.BigIntegerField()
    first_ts = models.DateTimeField()
    sum = models.FloatField(null=True)
    n_values = models.BigIntegerField()  # non-null values (sum / n_values is the mean)
    count = models.BigIntegerField()  # points

    def __str__(self) -> str:
        return f"{self.series_id}:{self.level}:{self.bucket}"


class Checkpoint(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    attempt = models.PositiveIntegerField()
    step = models.BigIntegerField()
    path = models.CharField(max_length=500)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # Its object in a bucket (CONTROLPLANE_STORAGE_URL=s3://...), so any worker can resume from
    # it; "" on a local store, where the file in the run directory is the checkpoint.
    storage_key = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_run_step")]

    def __str__(self) -> str:
        return f"{self.run_id}@{self.step}"


class Artifact(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    attempt = models.PositiveIntegerField()
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=32)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # A key of the store (runs/blobstore.py; relative to ARTIFACTS_DIR on a local one); never
    # taken from a user, only written by the supervisor.
    storage_key = models.CharField(max_length=500)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="artifact_run_name")]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.name}"


class ProgramSource(models.TextChoices):
    """Who last wrote a catalog program: the TOML seed may overwrite only its own writes."""

    SEED = "seed", "seed"
    API = "api", "api"


class ProgramDefinition(models.Model):
    """A program of the catalog, as written (the command keeps "{python}": each host puts its own
    interpreter there). Checked by `runs.programs.check_definition` on every write and read;
    written only through `runs.catalog`. Never deleted: retired, so old runs keep their program."""

    name = models.CharField(max_length=64, unique=True)
    description = models.TextField(blank=True, default="")
    command = models.JSONField()  # argv, a list of strings
    params = models.JSONField(default=dict)  # JSON-Schema property definitions, by param name
    launcher = models.CharField(max_length=16, default="direct")
    nproc_per_node = models.PositiveIntegerField(default=1)
    env = models.JSONField(default=dict)
    resources = models.JSONField(default=dict)  # {"pool": ..., "gpus": ...} for launches naming none
    queue = models.CharField(max_length=64, blank=True, default="")
    source = models.CharField(max_length=8, choices=ProgramSource.choices, default=ProgramSource.API)
    version = models.PositiveIntegerField(default=1)  # +1 on every change of the definition
    retired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def as_entry(self) -> dict[str, Any]:
        """The definition in the shape `check_definition` reads (a TOML table's)."""
        entry: dict[str, Any] = {
            "command": self.command,
            "description": self.description,
            "params": self.params,
            "launcher": self.launcher,
            "env": self.env,
            "resources": self.resources,
        }
        if self.queue:
            entry["queue"] = self.queue
        if self.launcher == "torchrun":
            entry["nproc_per_node"] = self.nproc_per_node
        return entry
