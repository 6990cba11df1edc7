"""Every Prometheus metric of the product, declared in this one module.

Two kinds:
- instruments (Counter, Gauge, Histogram) updated where things happen, in the process where they
  happen: the worker's are scraped from its own port (`CONTROLPLANE_WORKER_METRICS_PORT`), the
  web's from `/metrics`;
- families read at scrape time (`Family` below) from the shared truth (Postgres, Redis, the
  broker, NVML), built by the collectors in `ops.collectors`, `ops.gpu` and `ops.audit_metrics`.
  The web-state ones are registered only in the web process (on the first `/metrics` request),
  so a worker's port never queries the database and no series is exported twice.

Labels are bounded: statuses, outcomes, failure kinds, queue names, program names (registered by
admins), GPU indexes, fleet pools, worker states and priority bands. Never a run id or a user
name. This module imports nothing but prometheus_client, so the logging configuration can use it
while settings load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# -- read at scrape time ----------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    kind: Literal["gauge", "counter"]
    documentation: str
    labels: tuple[str, ...] = ()

    def build(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=list(self.labels))
        return GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))


# Web process (ops.collectors.WebStateCollector): one query per family, never one per series.
RUNS = Family("controlplane_runs", "gauge", "Runs by status", ("status",))
RUNS_FINISHED = Family(
    "controlplane_runs_finished",
    "counter",
    "Runs that reached a terminal status, by program, outcome (succeeded, failed, cancelled, dead) "
    "and failure kind (empty when succeeded)",
    ("program", "outcome", "failure_kind"),
)
DEAD_LETTERS = Family("controlplane_dead_letters", "gauge", "Dead-lettered runs not discarded")
QUEUE_DEPTH = Family("controlplane_queue_depth", "gauge", "Messages waiting in the broker queue", ("queue",))
QUEUE_OLDEST_AGE = Family(
    "controlplane_queue_oldest_age_seconds",
    "gauge",
    "Age of the oldest run still queued (since it became due), 0 when none",
    ("queue",),
)
WORKERS_LIVE = Family(
    "controlplane_workers_live",
    "gauge",
    "Workers whose heartbeat is fresh, per queue they consume",
    ("queue",),
)
CIRCUIT_BREAKER_STATE = Family(
    "controlplane_circuit_breaker_state",
    "gauge",
    "Circuit breaker state (0 closed, 1 half-open, 2 open)",
    ("breaker",),
)

# Web process (ops.fleet_view.FleetCollector): the fleet's devices and admission queue, read from
# the fleet tables. Labels: pool (set by operators per worker, or named by a launch and validated
# against the pools workers registered), kind (gpu, slot), worker_state (active, draining, lost),
# priority_band (PRIORITY_BANDS): pools x 2 x 3 and pools x 4 series, never one per run or worker.
FLEET_DEVICES = Family(
    "controlplane_fleet_devices",
    "gauge",
    "Devices the fleet's workers offer, by pool, kind (gpu or slot) and worker state",
    ("pool", "kind", "worker_state"),
)
FLEET_DEVICES_IN_USE = Family(
    "controlplane_fleet_devices_in_use",
    "gauge",
    "Devices reserved for a run, by pool, kind (gpu or slot) and worker state",
    ("pool", "kind", "worker_state"),
)
FLEET_QUEUED_RUNS = Family(
    "controlplane_fleet_queued_runs",
    "gauge",
    "Runs waiting for admission (queued, no devices yet), by requested pool and priority band",
    ("pool", "priority_band"),
)
FLEET_QUEUE_OLDEST_WAIT = Family(
    "controlplane_fleet_queue_oldest_wait_seconds",
    "gauge",
    "How long the longest-waiting run of the pool and priority band has waited for admission "
    "(since it became due), 0 when none waits",
    ("pool", "priority_band"),
)
# Launch priorities are 0-100; four fixed bands keep the label bounded. (low, high, label).
PRIORITY_BANDS: tuple[tuple[int, int, str], ...] = (
    (0, 24, "0-24"),
    (25, 49, "25-49"),
    (50, 74, "50-74"),
    (75, 100, "75-100"),
)


def priority_band(priority: int) -> str:
    for low, high, label in PRIORITY_BANDS:
        if low <= priority <= high:
            return label
    return PRIORITY_BANDS[-1][2] if priority > 100 else PRIORITY_BANDS[0][2]


# The process that verified the audit chain (the housekeeping worker); absent elsewhere, so a
# training worker never reports a chain it did not check.
AUDIT_CHAIN_OK = Family(
    "controlplane_audit_chain_ok", "gauge", "1 when the last audit chain verification passed, else 0"
)
AUDIT_LAST_VERIFIED = Family(
    "controlplane_audit_last_verified_timestamp_seconds",
    "gauge",
    "Unix time of the last audit chain verification",
)
AUDIT_UNANCHORED = Family(
    "controlplane_audit_unanchored_seconds",
    "gauge",
    "Seconds since every audit record was last covered by a signed checkpoint in every external "
    "anchor sink: the window in which records could be deleted unnoticed",
)

# Worker process, only where NVML and a GPU exist (ops.gpu).
GPU_MEMORY_USED = Family("controlplane_gpu_memory_used_bytes", "gauge", "GPU memory in use", ("gpu",))
GPU_MEMORY_TOTAL = Family("controlplane_gpu_memory_total_bytes", "gauge", "GPU memory in total", ("gpu",))
GPU_UTILIZATION = Family(
    "controlplane_gpu_utilization_ratio", "gauge", "GPU busy fraction over the last sample period", ("gpu",)
)

# -- instruments: web process -----------------------------------------------------------------

WEBSOCKET_CONNECTIONS = Gauge("controlplane_websocket_connections", "Open run websockets in this process")
HTTP_REQUESTS_REJECTED = Counter(
    "controlplane_http_requests_rejected_total",
    "Requests refused before reaching a view",
    ["reason"],
)
REJECTION_REASONS = ("metrics_token", "metrics_network", "database_unavailable")

# -- instruments: worker process --------------------------------------------------------------

DISPATCH_LATENCY = Histogram(
    "controlplane_dispatch_latency_seconds",
    "From the run's message being sent to its training process being started",
    ["queue"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
TRAINING_STEP_SECONDS = Histogram(
    "controlplane_training_step_seconds",
    "Time per reported training step (the program's step_time_ms, else wall time between steps)",
    ["program"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TRAINING_TOKENS = Counter(
    "controlplane_training_tokens_total",
    "Tokens trained (tokens_per_s times the step time); rate() gives tokens per second",
    ["program"],
)
INGEST_BATCH_SIZE = Histogram(
    "controlplane_ingest_batch_size",
    "Rows written per supervisor batch (log lines, metric points); a batch holds at most 20,000 rows",
    ["kind"],
    buckets=(1, 5, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 20000),
)
INGEST_KINDS = ("log", "metric")
STREAM_LAG = Histogram(
    "controlplane_stream_lag_seconds",
    "Per batch: from its oldest line being read from the program to the batch being committed",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
LEASE_EXPIRIES = Counter("controlplane_lease_expiries_total", "Attempts whose lease expired (worker lost)")
RECONCILER_ACTIONS = Counter("controlplane_reconciler_actions_total", "What the reconciler did", ["action"])
RECONCILER_ACTION_NAMES = ("leases_expired", "requeued", "dead", "expired_in_queue", "dispatched")
FLEET_LAUNCH_TO_START = Histogram(
    "controlplane_fleet_launch_to_start_seconds",
    "From a run's launch to its program starting (first attempts: a resume waits from its requeue), "
    "by the pool it asked for and its priority band: admission wait plus dispatch",
    ["pool", "priority_band"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400, 43200),
)
RUNS_SUPERVISED = Gauge("controlplane_runs_supervised", "Runs this process supervises now")

# -- instruments: every process ---------------------------------------------------------------

LOG_LINES_DROPPED = Counter(
    "controlplane_log_lines_dropped_total",
    "Log lines dropped by the flood guard (flood) or by DEBUG sampling (sampled)",
    ["reason"],
)
LOG_DROP_REASONS = ("flood", "sampled")

_registered = False


def register() -> None:
    """Process-wide set-up (every process): known label values start at 0, so an alert sees 0
    rather than an absent series, and the supervised-runs gauge reads the live registry."""
    global _registered
    if _registered:
        return
    _registered = True
    for reason in LOG_DROP_REASONS:
        LOG_LINES_DROPPED.labels(reason=reason)
    for action in RECONCILER_ACTION_NAMES:
        RECONCILER_ACTIONS.labels(action=action)
    for reason in REJECTION_REASONS:
        HTTP_REQUESTS_REJECTED.labels(reason=reason)
    for kind in INGEST_KINDS:
        INGEST_BATCH_SIZE.labels(kind=kind)


def websocket_opened(consumer: object) -> None:
    WEBSOCKET_CONNECTIONS.inc()
    consumer.__dict__["_counted_connection"] = True


def websocket_closed(consumer: object) -> None:
    # Only a connection that was counted (accepted) is uncounted; a refused handshake never was.
    if consumer.__dict__.pop("_counted_connection", False):
        WEBSOCKET_CONNECTIONS.dec()
