from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class WorkerState(models.TextChoices):
    ACTIVE = "active"
    DRAINING = "draining"  # an admin stopped new placements; its runs finish
    # `lost` is shown, not stored: a worker whose heartbeat is older than the lease is lost for
    # placement whatever its row says (fleet.selectors.worker_state).


class DeviceKind(models.TextChoices):
    GPU = "gpu"
    SLOT = "slot"  # a CPU-only slot of a worker without GPUs


class Worker(models.Model):
    """One Celery worker process of the fleet, heartbeated by itself (fleet.agent)."""

    name = models.CharField(max_length=255, unique=True)  # the Celery hostname
    pool = models.CharField(max_length=64, default="default")
    host = models.CharField(max_length=255, blank=True)
    queue = models.CharField(max_length=64)  # its own queue: the scheduler sends its runs here
    state = models.CharField(max_length=16, choices=WorkerState.choices, default=WorkerState.ACTIVE)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["pool", "state"], name="fleet_worker_pool_state")]

    def __str__(self) -> str:
        return f"worker {self.name} ({self.pool})"


class Device(models.Model):
    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="devices")
    index = models.PositiveSmallIntegerField()  # what CUDA_VISIBLE_DEVICES names; a slot's number
    kind = models.CharField(max_length=8, choices=DeviceKind.choices)
    model = models.CharField(max_length=128, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["worker", "index"], name="fleet_device_unique_index")]
        ordering = ["worker_id", "index"]

    def __str__(self) -> str:
        return f"{self.kind} {self.index} of worker {self.worker_id}"


class Reservation(models.Model):
    """A device held for a run, created in the scheduler pass that admits the run.

    One-to-one with the device: two passes (or a pass and anything else) can never give one
    device to two runs, whatever their timing; the second INSERT fails on the constraint.
    """

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="reservation")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="reservations")
    # Which node of a multi-node run (a gang) this device serves: 0 for a one-node run, and for
    # the gang's first node, whose worker claims the run and hosts the rendezvous.
    node_rank = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"device {self.device_id} for run {self.run_id}"


class GangNode(models.Model):
    """One node of an attempt of a multi-node run (fleet/gang.py).

    Node 0 inserts its row when it claims the run, with the rendezvous endpoint its torchrun will
    host; every other node inserts its own when it joins that attempt (unique: one supervisor per
    node and attempt, whatever the deliveries). Each node's supervisor heartbeats its row; node 0
    holds the run's one lease and fails the attempt when another node stops beating or exits
    with an error, and a lost node 0 lets the lease expire, which ends the others' attempt.
    """

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="gang_nodes")
    attempt = models.PositiveIntegerField()
    node_rank = models.PositiveSmallIntegerField()
    worker = models.CharField(max_length=255)
    endpoint = models.CharField(max_length=300, blank=True)  # node 0's "host:port"
    heartbeat_at = models.DateTimeField(default=timezone.now)
    exit_code = models.IntegerField(null=True, blank=True)  # set when the node's program ended

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "attempt", "node_rank"], name="fleet_gangnode_unique")
        ]

    def __str__(self) -> str:
        return f"node {self.node_rank} of run {self.run_id} attempt {self.attempt}"


class Quota(models.Model):
    """GPUs a user may hold at once; without a row the role's default applies."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gpu_quota")
    max_gpus = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"user {self.user_id}: {self.max_gpus} GPUs"
