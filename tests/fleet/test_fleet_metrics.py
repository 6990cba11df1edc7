"""The fleet on `/metrics`: devices total and in use by pool, kind and worker state; runs waiting for
admission and the longest wait by pool and priority band. A seeded fleet (rows, no processes), the
web process's real `/metrics` view, numbers asserted."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from fleet.models import Device, Reservation, Worker, WorkerState
from ops.metrics import priority_band
from runs.models import Run, RunStatus
from tests.conftest import make_user
from tests.fleet.helpers import cpu_worker, gpu_worker, waiting_run

pytestmark = pytest.mark.django_db

Labels = frozenset[tuple[str, str]]


def scrape() -> dict[tuple[str, Labels], float]:
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    found = {}
    for family in text_string_to_metric_families(response.content.decode()):
        if family.name.startswith("controlplane_fleet_"):
            for sample in family.samples:
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def devices(found: dict[tuple[str, Labels], float], name: str, pool: str, kind: str, state: str) -> float:
    return found[(name, frozenset({"pool": pool, "kind": kind, "worker_state": state}.items()))]


def queued(found: dict[tuple[str, Labels], float], name: str, pool: str, band: str) -> float:
    return found[(name, frozenset({"pool": pool, "priority_band": band}.items()))]


def holding(owner: User, worker: Worker, indexes: list[int], gpus: int) -> Run:
    """A run the scheduler placed on `worker`, holding the devices `indexes`, now running."""
    run = waiting_run(owner, pool=worker.pool, gpus=gpus)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, queue=worker.queue, attempt=1)
    for device in Device.objects.filter(worker=worker, index__in=indexes):
        Reservation.objects.create(device=device, run=run)
    return run


def waiting_since(run: Run, seconds: float) -> None:
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))


@pytest.fixture
def seeded_fleet() -> dict[str, Run]:
    """Two pools. a100: `big` (4 GPUs, 3 held), `gone` (2 GPUs, lost, 1 still held by its run);
    cpu: `slow` (2 slots, draining, none held). Waiting: two a100 runs in different bands, one cpu
    run; one a100 run admitted (pointed at a worker's queue) is not waiting any more."""
    alice, bob = make_user("alice", "admin"), make_user("bob")
    big = gpu_worker("big", 4)
    gone = gpu_worker("gone", 2)
    Worker.objects.filter(pk=gone.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    slow = cpu_worker("slow", 2, pool="cpu")
    Worker.objects.filter(pk=slow.pk).update(state=WorkerState.DRAINING)
    holding(alice, big, [0, 1], gpus=2)
    holding(bob, big, [3], gpus=1)
    holding(bob, gone, [1], gpus=1)
    admitted = waiting_run(alice, gpus=1, priority=90)
    Run.objects.filter(pk=admitted.pk).update(queue=big.queue)
    Reservation.objects.create(device=Device.objects.get(worker=big, index=2), run=admitted)
    urgent = waiting_run(alice, gpus=4, priority=80)
    waiting_since(urgent, 120)
    low = waiting_run(bob, gpus=8, priority=10)
    waiting_since(low, 600)
    older_low = waiting_run(bob, gpus=1, priority=0)
    waiting_since(older_low, 900)
    cpu = waiting_run(bob, pool="cpu", gpus=0, priority=50)
    waiting_since(cpu, 30)
    return {"urgent": urgent, "low": low, "older_low": older_low, "cpu": cpu}


def test_devices_are_counted_by_pool_kind_and_worker_state_with_those_in_use(
    seeded_fleet: dict[str, Run],
) -> None:
    found = scrape()
    total, in_use = "controlplane_fleet_devices", "controlplane_fleet_devices_in_use"
    assert devices(found, total, "a100", "gpu", "active") == 4
    assert devices(found, in_use, "a100", "gpu", "active") == 4  # 2 + 1 running, 1 admitted
    assert devices(found, total, "a100", "gpu", "lost") == 2
    assert devices(found, in_use, "a100", "gpu", "lost") == 1
    assert devices(found, total, "a100", "gpu", "draining") == 0
    assert devices(found, total, "cpu", "slot", "draining") == 2
    assert devices(found, in_use, "cpu", "slot", "draining") == 0
    assert devices(found, total, "cpu", "slot", "active") == 0
    # Only the (pool, kind) pairs the fleet has: no gpu series for the cpu pool.
    assert not any(
        dict(labels).get("pool") == "cpu" and dict(labels).get("kind") == "gpu" for _, labels in found
    )


def test_runs_waiting_for_admission_are_counted_by_pool_and_priority_band(
    seeded_fleet: dict[str, Run],
) -> None:
    found = scrape()
    name = "controlplane_fleet_queued_runs"
    assert queued(found, name, "a100", "75-100") == 1  # urgent; the admitted run waits no more
    assert queued(found, name, "a100", "0-24") == 2  # low and older_low
    assert queued(found, name, "a100", "25-49") == 0
    assert queued(found, name, "a100", "50-74") == 0
    assert queued(found, name, "cpu", "50-74") == 1
    assert sum(v for (n, _), v in found.items() if n == name) == 4


def test_the_longest_wait_of_each_pool_and_band_is_reported_in_seconds(seeded_fleet: dict[str, Run]) -> None:
    found = scrape()
    name = "controlplane_fleet_queue_oldest_wait_seconds"
    assert 900 <= queued(found, name, "a100", "0-24") < 960  # older_low, not low
    assert 120 <= queued(found, name, "a100", "75-100") < 180
    assert 30 <= queued(found, name, "cpu", "50-74") < 90
    assert queued(found, name, "a100", "25-49") == 0
    # A run whose retry backoff has not ended yet waits from when it becomes due.
    Run.objects.filter(pk=seeded_fleet["cpu"].pk).update(not_before=timezone.now() + timedelta(minutes=5))
    assert queued(scrape(), name, "cpu", "50-74") == 0


def test_the_fleet_view_costs_two_queries_whatever_the_size_of_the_fleet(
    seeded_fleet: dict[str, Run],
) -> None:
    scrape()  # registers the collectors

    def fleet_queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            scrape()
        return sum(
            1
            for query in captured.captured_queries
            if "fleet_device" in query["sql"] or '"runs_run"."resources"' in query["sql"]
        )

    small = fleet_queries()
    owner = make_user("carol")
    for i in range(10):
        gpu_worker(f"extra-{i}", 8, pool=f"pool-{i % 3}")
        waiting_run(owner, pool=f"pool-{i % 3}", gpus=1, priority=i * 10)
    assert fleet_queries() == small == 2


def test_priority_bands_cover_every_launch_priority_with_four_labels() -> None:
    bands = {priority_band(p) for p in range(0, 101)}
    assert bands == {"0-24", "25-49", "50-74", "75-100"}
    assert [priority_band(p) for p in (0, 24, 25, 49, 50, 74, 75, 100)] == [
        "0-24",
        "0-24",
        "25-49",
        "25-49",
        "50-74",
        "50-74",
        "75-100",
        "75-100",
    ]
