"""What a worker measures while it supervises runs, and how it exposes it.

The supervisor calls the `process_started`, `observe_event`, `batch_written` and
`supervision_ended` hooks (one line each, never raising into it). A worker started by the CLI
serves its registry on `CONTROLPLANE_WORKER_METRICS_PORT` (`start_server`); the standalone
embedded worker shares the web process's registry and `/metrics` instead.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from django.conf import settings
from django.utils import timezone
from prometheus_client import REGISTRY, start_http_server

from ops.metrics import (
    DISPATCH_LATENCY,
    FLEET_LAUNCH_TO_START,
    INGEST_BATCH_SIZE,
    STREAM_LAG,
    TRAINING_STEP_SECONDS,
    TRAINING_TOKENS,
    priority_band,
)

log = structlog.get_logger(__name__)


@dataclass
class _Meter:
    program: str
    last_step: int | None = None
    last_at: float = 0.0


_meters: dict[int, _Meter] = {}
_lock = threading.Lock()
_clock = time.monotonic


def process_started(run_id: int, program: str, queue: str, enqueued_at: datetime | None) -> None:
    """The run's training process has started: dispatch latency, and step metering from now."""
    with _lock:
        _meters[run_id] = _Meter(program=program)
    if enqueued_at is None:
        return  # dispatched by hand (no recorded send), nothing to measure from
    DISPATCH_LATENCY.labels(queue=queue).observe(max(0.0, (timezone.now() - enqueued_at).total_seconds()))


def first_attempt_started(pool: str, priority: int, launched_at: datetime) -> None:
    """A run's first program started: how long it waited since launch, by pool and priority band."""
    waited = max(0.0, (timezone.now() - launched_at).total_seconds())
    FLEET_LAUNCH_TO_START.labels(pool=pool[:64], priority_band=priority_band(priority)).observe(waited)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def observe_event(run_id: int, event: Any) -> None:
    """Step time and tokens from a metric event.

    The step time is the program's `step_time_ms` when it reports one, else the wall time since
    its previous step divided by the steps in between; tokens are `tokens_per_s` times that time.
    Events that repeat a step (an evaluation at the same step) measure nothing new.
    """
    if not isinstance(event, dict) or event.get("type") != "metric":
        return
    step, values = event.get("step"), event.get("values")
    if isinstance(step, bool) or not isinstance(step, int) or not isinstance(values, dict):
        return
    now = _clock()
    with _lock:
        meter = _meters.get(run_id)
        if meter is None:
            return
        previous, previous_at = meter.last_step, meter.last_at
        if previous is not None and step <= previous:
            return
        meter.last_step, meter.last_at = step, now
    reported = _number(values.get("step_time_ms"))
    if reported is not None:
        seconds, steps = reported / 1000.0, 1
    elif previous is not None:
        steps = step - previous
        seconds = (now - previous_at) / steps
    else:
        return  # the first step of a program that does not time itself: no interval yet
    TRAINING_STEP_SECONDS.labels(program=meter.program).observe(seconds)
    tokens_per_s = _number(values.get("tokens_per_s"))
    if tokens_per_s is not None:
        TRAINING_TOKENS.labels(program=meter.program).inc(tokens_per_s * seconds * steps)


def batch_written(batch: Any) -> None:
    """A batch is committed: its sizes, and the lag of its oldest line (read → committed)."""
    if batch.lines:
        INGEST_BATCH_SIZE.labels(kind="log").observe(len(batch.lines))
        oldest = min(ts for ts, _, _ in batch.lines)
        STREAM_LAG.observe(max(0.0, (timezone.now() - oldest).total_seconds()))
    if batch.points:
        INGEST_BATCH_SIZE.labels(kind="metric").observe(len(batch.points))


def supervision_ended(run_id: int) -> None:
    with _lock:
        _meters.pop(run_id, None)


# -- the worker's own endpoint ------------------------------------------------------------------

_server_port: int | None = None


def start_server(port: int | None = None, addr: str = "0.0.0.0") -> int | None:  # noqa: S104
    """Serve this process's registry over HTTP; returns the port, or None when disabled or busy.

    A worker must start even when the port is taken (two workers on one host with the same
    setting): it logs the clash and runs without an endpoint.
    """
    global _server_port
    if _server_port is not None:
        return _server_port
    port = int(settings.WORKER_METRICS_PORT) if port is None else port
    if port == 0:
        return None
    try:
        start_http_server(port, addr=addr, registry=REGISTRY)
    except OSError as error:
        log.warning("worker_metrics_port_unavailable", port=port, error=str(error)[:200])
        return None
    _server_port = port
    log.info("worker_metrics_serving", port=port)
    return port
