"""What the fleet gives `/metrics` (ops.fleet_view): device and queue counts, two queries a scrape."""

from __future__ import annotations

from django.db.models import Case, CharField, Count, DateTimeField, F, Min, Q, QuerySet, Value, When
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce, Greatest, NullIf
from django.utils import timezone

from fleet.agent import lost_before
from fleet.models import Device
from ops.fleet_view import DeviceCount, FleetView, QueueCount
from ops.metrics import PRIORITY_BANDS
from runs import lifecycle
from runs.models import Run


def read_fleet_view() -> FleetView:
    return FleetView(devices=device_counts(), queued=queue_counts())


def device_counts() -> list[DeviceCount]:
    """Devices by pool, kind and worker state (lost when its heartbeat is older than a lease, as
    the scheduler sees it), with how many are reserved."""
    state = Case(
        When(worker__heartbeat_at__lt=lost_before(timezone.now()), then=Value("lost")),
        default=F("worker__state"),
        output_field=CharField(),
    )
    rows = (
        Device.objects.annotate(device_pool=F("worker__pool"), worker_state=state)
        .values("device_pool", "kind", "worker_state")
        .annotate(total=Count("pk"), in_use=Count("reservation"))
        .order_by()  # no Meta ordering in the GROUP BY
    )
    return [
        DeviceCount(row["device_pool"], row["kind"], row["worker_state"], row["total"], row["in_use"])
        for row in rows
    ]


def waiting_for_admission() -> QuerySet[Run]:
    """Queued runs the scheduler has not placed yet (an admitted run points at a worker's queue)."""
    return lifecycle.queued_runs().filter(queue="")


def queue_counts() -> list[QueueCount]:
    """Runs waiting for admission by requested pool and priority band, and when the longest
    waiting of each became due (queued, or its retry backoff ended), as for
    `controlplane_queue_oldest_age_seconds`."""
    # The pool a run asked for, "default" when it named none (fleet.scheduler.requested).
    pool = Coalesce(NullIf(KT("resources__pool"), Value("")), Value("default"), output_field=CharField())
    band = Case(
        *[When(Q(priority__lte=high), then=Value(label)) for _, high, label in PRIORITY_BANDS[:-1]],
        default=Value(PRIORITY_BANDS[-1][2]),
        output_field=CharField(),
    )
    due = Greatest("updated_at", Coalesce("not_before", "updated_at"), output_field=DateTimeField())
    rows = (
        waiting_for_admission()
        .annotate(wanted_pool=pool, priority_band=band)
        .values("wanted_pool", "priority_band")
        .annotate(runs=Count("pk"), since=Min(due))
        .order_by()
    )
    return [
        QueueCount(row["wanted_pool"][:64], row["priority_band"], row["runs"], row["since"]) for row in rows
    ]
