"""The worker's side of the fleet: register its row and devices, consume its own queue, heartbeat.

Started by the Celery `worker_init` signal (controlplane/celery.py), so a worker started as the
README says serves the pool and devices its environment declares with no extra queue flags. The
heartbeat is a row update every `ops.worker_heartbeat.INTERVAL_SECONDS`; a worker whose row is
older than the lease is lost for placement (fleet.selectors).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.utils import timezone

from fleet.inventory import DeviceSpec, discover
from fleet.models import Device, Worker
from ops.worker_heartbeat import INTERVAL_SECONDS

log = structlog.get_logger(__name__)
QUEUE_PREFIX = "worker."
# Standalone's --slots: the CPU slots its embedded worker offers (set before it starts).
SLOTS_OVERRIDE: dict[str, int] = {}
# The fleet workers of this process (one per Celery worker; a task's own `request.hostname` is
# not the node name under every pool: the solo pool gives the bare host).
LOCAL_WORKERS: set[str] = set()


def local_worker(hostname: str | None) -> str | None:
    """The fleet worker a task of this process runs on; None outside a fleet worker."""
    if hostname in LOCAL_WORKERS:
        return hostname
    return next(iter(LOCAL_WORKERS)) if len(LOCAL_WORKERS) == 1 else None


def queue_for(name: str) -> str:
    """A worker's own queue, derived from its name alone (known before the database answers)."""
    queue = QUEUE_PREFIX + name
    if len(queue) <= 64:
        return queue
    return QUEUE_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:32]


def register(name: str, pool: str, devices: list[DeviceSpec], *, host: str | None = None) -> Worker:
    """Create or refresh the worker's row and its devices; an admin's `draining` is kept."""
    now = timezone.now()
    with transaction.atomic():
        worker, _ = Worker.objects.update_or_create(
            name=name,
            defaults={
                "pool": pool[:64],
                "host": (host or socket.gethostname())[:255],
                "queue": queue_for(name),
                "heartbeat_at": now,
                "started_at": now,
            },
        )
        offered = {spec.index: spec for spec in devices}
        # A device no longer offered goes, with its reservation (the process that held it is gone).
        Device.objects.filter(worker=worker).exclude(index__in=list(offered)).delete()
        for spec in offered.values():
            Device.objects.update_or_create(
                worker=worker,
                index=spec.index,
                defaults={"kind": spec.kind, "model": spec.model, "memory_bytes": spec.memory_bytes},
            )
    log.info("fleet_worker_registered", worker=name, pool=pool, devices=sorted(offered))
    return worker


def lost_before(now: datetime | None = None) -> datetime:
    """A worker whose last heartbeat is older than this is lost: no run is placed on it."""
    return (now or timezone.now()) - timedelta(seconds=float(settings.CONTROLPLANE["LEASE_SECONDS"]))


class Agent:
    """Keeps one worker's row alive until `stop()`; re-registers after a database outage."""

    def __init__(self, name: str, *, pool: str | None = None, slots: int | None = None) -> None:
        self.name = name
        self.pool = pool or str(settings.FLEET["WORKER_POOL"])
        self.devices = discover(slots=slots)
        self.queue = queue_for(name)
        self._stop = threading.Event()
        self._registered = False
        self._thread = threading.Thread(target=self._loop, name="fleet-heartbeat", daemon=True)

    def start(self) -> None:
        LOCAL_WORKERS.add(self.name)
        self._thread.start()

    def beat(self) -> None:
        """One heartbeat: register when needed; a pass when the worker came (back) to life."""
        from fleet.scheduler import schedule_pass_safely

        now = timezone.now()
        if self._registered:
            previous = Worker.objects.filter(name=self.name).values_list("heartbeat_at", flat=True).first()
            if previous is not None and Worker.objects.filter(name=self.name).update(heartbeat_at=now):
                if previous < lost_before(now):
                    schedule_pass_safely("worker_back")
                return
        register(self.name, self.pool, self.devices)
        self._registered = True
        schedule_pass_safely("worker_registered")

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.beat()
                failing = False
            except DatabaseError as error:
                if not failing:
                    log.warning("fleet_heartbeat_failed", worker=self.name, error=str(error)[:200])
                failing = True
                self._registered = False
            finally:
                close_old_connections()
            self._stop.wait(INTERVAL_SECONDS)

    def stop(self) -> None:
        """Leave the fleet: marked lost at once, so no pass places a run here any more."""
        self._stop.set()
        LOCAL_WORKERS.discard(self.name)
        self._thread.join(timeout=5)
        gone = timezone.now() - timedelta(seconds=float(settings.CONTROLPLANE["LEASE_SECONDS"]) + 1)
        try:
            Worker.objects.filter(name=self.name).update(heartbeat_at=gone)
        except DatabaseError:
            pass  # its heartbeat runs out by itself
        finally:
            close_old_connections()
