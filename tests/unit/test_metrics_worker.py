"""What a worker measures: step time and tokens from events, batch sizes and stream lag, dispatch
latency, the audit gauges, GPU metrics (through a stand-in NVML), and its own HTTP endpoint."""

from __future__ import annotations

import sys
import types
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from prometheus_client import CollectorRegistry

from ops import gpu, metrics, worker_metrics
from ops.audit_metrics import AuditStateCollector, audit_state
from runs.batches import Batch
from runs.models import Run
from runs.selectors import dispatch_record
from tests.conftest import free_port

# The instruments under test only: the process-wide registry may also hold the web's collectors
# (registered by other tests' scrapes), which read a database these tests do not open.
_UNDER_TEST = CollectorRegistry(auto_describe=False)
for _instrument in (
    metrics.DISPATCH_LATENCY,
    metrics.TRAINING_STEP_SECONDS,
    metrics.TRAINING_TOKENS,
    metrics.INGEST_BATCH_SIZE,
    metrics.STREAM_LAG,
    metrics.WEBSOCKET_CONNECTIONS,
    audit_state,
):
    _UNDER_TEST.register(_instrument)


def sample(name: str, **labels: str) -> float:
    return _UNDER_TEST.get_sample_value(name, labels) or 0.0


def test_step_time_and_tokens_come_from_the_programs_own_timing() -> None:
    before_count = sample("controlplane_training_step_seconds_count", program="unit-timed")
    before_sum = sample("controlplane_training_step_seconds_sum", program="unit-timed")
    before_tokens = sample("controlplane_training_tokens_total", program="unit-timed")
    worker_metrics._meters[901] = worker_metrics._Meter(program="unit-timed")
    try:
        for step in (1, 2, 3):
            worker_metrics.observe_event(
                901,
                {"type": "metric", "step": step, "values": {"step_time_ms": 250.0, "tokens_per_s": 512.0}},
            )
        # An evaluation at the same step, a progress event and garbage measure nothing.
        worker_metrics.observe_event(901, {"type": "metric", "step": 3, "values": {"val/loss": 1.0}})
        worker_metrics.observe_event(901, {"type": "progress", "step": 4, "total": 10})
        worker_metrics.observe_event(901, {"type": "metric", "step": "x", "values": {}})
        worker_metrics.observe_event(901, [1, 2])
    finally:
        worker_metrics.supervision_ended(901)
    assert sample("controlplane_training_step_seconds_count", program="unit-timed") - before_count == 3
    assert sample(
        "controlplane_training_step_seconds_sum", program="unit-timed"
    ) - before_sum == pytest.approx(0.75)
    # 512 tokens/s for 0.25 s: 128 tokens a step.
    assert sample(
        "controlplane_training_tokens_total", program="unit-timed"
    ) - before_tokens == pytest.approx(384)


def test_without_its_own_timing_a_step_takes_the_wall_time_between_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(worker_metrics, "_clock", lambda: next(clock))
    worker_metrics._meters[902] = worker_metrics._Meter(program="unit-wall")
    try:
        worker_metrics.observe_event(902, {"type": "metric", "step": 10, "values": {"loss": 1.0}})
        worker_metrics.observe_event(
            902, {"type": "metric", "step": 20, "values": {"loss": 0.5, "tokens_per_s": 100}}
        )
    finally:
        worker_metrics.supervision_ended(902)
    assert sample("controlplane_training_step_seconds_count", program="unit-wall") == 1
    assert sample("controlplane_training_step_seconds_sum", program="unit-wall") == pytest.approx(0.2)
    assert sample("controlplane_training_tokens_total", program="unit-wall") == pytest.approx(200)


def test_a_written_batch_records_its_sizes_and_the_lag_of_its_oldest_line() -> None:
    before = {
        "log": sample("controlplane_ingest_batch_size_count", kind="log"),
        "metric": sample("controlplane_ingest_batch_size_count", kind="metric"),
        "lag_count": sample("controlplane_stream_lag_seconds_count"),
        "lag_sum": sample("controlplane_stream_lag_seconds_sum"),
        "log_sum": sample("controlplane_ingest_batch_size_sum", kind="log"),
        "metric_sum": sample("controlplane_ingest_batch_size_sum", kind="metric"),
        "metric_le_5": sample("controlplane_ingest_batch_size_bucket", kind="metric", le="5.0"),
        "metric_le_1": sample("controlplane_ingest_batch_size_bucket", kind="metric", le="1.0"),
    }
    now = timezone.now()
    batch = Batch(
        lines=[(now - timedelta(seconds=3), "stdout", "a"), (now, "stdout", "b")],
        points=[("loss", 1, 1.0, now)] * 5,
    )
    worker_metrics.batch_written(batch)
    worker_metrics.batch_written(Batch())  # an empty batch adds nothing
    assert sample("controlplane_ingest_batch_size_count", kind="log") - before["log"] == 1
    assert sample("controlplane_ingest_batch_size_count", kind="metric") - before["metric"] == 1
    assert sample("controlplane_stream_lag_seconds_count") - before["lag_count"] == 1
    assert 3.0 <= sample("controlplane_stream_lag_seconds_sum") - before["lag_sum"] < 5.0
    # The sizes themselves: 2 lines and 5 points, in the 5-row bucket and not in the 1-row one.
    assert sample("controlplane_ingest_batch_size_sum", kind="log") - before["log_sum"] == 2
    assert sample("controlplane_ingest_batch_size_sum", kind="metric") - before["metric_sum"] == 5
    assert (
        sample("controlplane_ingest_batch_size_bucket", kind="metric", le="5.0") - before["metric_le_5"] == 1
    )
    assert (
        sample("controlplane_ingest_batch_size_bucket", kind="metric", le="1.0") - before["metric_le_1"] == 0
    )


@pytest.mark.django_db
def test_dispatch_latency_runs_from_the_send_to_the_process_start(owner: User) -> None:
    run = Run.objects.create(
        name="d",
        owner=owner,
        program="scripted",
        queue="latency-q",
        enqueued_at=timezone.now() - timedelta(seconds=7),
    )
    worker_metrics.process_started(run.pk, "scripted", *dispatch_record(run.pk))
    worker_metrics.supervision_ended(run.pk)
    unsent = Run.objects.create(name="u", owner=owner, program="scripted", queue="latency-q")
    worker_metrics.process_started(
        unsent.pk, "scripted", *dispatch_record(unsent.pk)
    )  # sent by hand: nothing to measure from
    worker_metrics.supervision_ended(unsent.pk)
    assert sample("controlplane_dispatch_latency_seconds_count", queue="latency-q") == 1
    assert 7.0 <= sample("controlplane_dispatch_latency_seconds_sum", queue="latency-q") < 9.0


def test_the_audit_gauges_exist_only_once_a_verification_ran_and_follow_the_last() -> None:
    state = AuditStateCollector()
    registry = CollectorRegistry()
    registry.register(state)
    assert registry.get_sample_value("controlplane_audit_chain_ok") is None  # not 0: never checked
    state.set(True, 1_800_000_000.0)
    assert registry.get_sample_value("controlplane_audit_chain_ok") == 1
    state.set(False, 1_800_003_600.0)
    assert registry.get_sample_value("controlplane_audit_chain_ok") == 0
    assert registry.get_sample_value("controlplane_audit_last_verified_timestamp_seconds") == 1_800_003_600.0


def test_the_websocket_gauge_counts_only_accepted_connections() -> None:
    class Consumer:
        pass

    before = sample("controlplane_websocket_connections")
    accepted, refused = Consumer(), Consumer()
    metrics.websocket_opened(accepted)
    assert sample("controlplane_websocket_connections") - before == 1
    metrics.websocket_closed(refused)  # closed before it was ever accepted
    metrics.websocket_closed(accepted)
    metrics.websocket_closed(accepted)  # channels may report a disconnect twice
    assert sample("controlplane_websocket_connections") == before


# -- GPUs -----------------------------------------------------------------------------------


def _fake_nvml(count: int) -> types.ModuleType:
    """A stand-in for the NVML bindings (`pynvml`): no GPU or driver on the machines that run
    this suite, and the product does not depend on the package, so the formatting of what NVML
    reports is tested against this module injected in sys.modules."""
    module = types.ModuleType("pynvml")
    memory = [(1_000, 8_000), (6_000, 80_000)]
    busy = [12, 97]
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=memory[handle][0], total=memory[handle][1], free=memory[handle][1] - memory[handle][0]
    )
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=busy[handle], memory=0
    )
    return module


def _exposition(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    found = {}
    for family in registry.collect():
        for s in family.samples:
            found[(s.name, s.labels.get("gpu", ""))] = s.value
    return found


def test_gpu_memory_and_utilization_are_exported_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(2))
    monkeypatch.setattr(gpu, "_registered", None)
    registry = CollectorRegistry()
    assert gpu.register(registry) is not None
    found = _exposition(registry)
    assert found[("controlplane_gpu_memory_used_bytes", "0")] == 1_000
    assert found[("controlplane_gpu_memory_total_bytes", "1")] == 80_000
    assert found[("controlplane_gpu_utilization_ratio", "0")] == pytest.approx(0.12)
    assert found[("controlplane_gpu_utilization_ratio", "1")] == pytest.approx(0.97)
    assert len(found) == 6


def test_no_gpu_metrics_without_nvml_or_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_registered", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # an import of it fails, as on this machine
    registry = CollectorRegistry()
    assert gpu.register(registry) is None
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(0))
    assert gpu.register(registry) is None
    assert _exposition(registry) == {}


def test_a_failing_gpu_leaves_the_scrape_working(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _fake_nvml(1)

    def fell_off_the_bus(handle: Any) -> Any:
        raise RuntimeError("GPU is lost")

    broken.nvmlDeviceGetMemoryInfo = fell_off_the_bus  # type: ignore[attr-defined]
    registry = CollectorRegistry()
    registry.register(gpu.NvmlCollector(broken))
    assert _exposition(registry) == {}


# -- the worker's endpoint -------------------------------------------------------------------


def test_the_worker_endpoint_serves_this_process_registry_and_zero_disables_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_metrics, "_server_port", None)
    assert worker_metrics.start_server(0) is None
    port = free_port()
    assert worker_metrics.start_server(port, addr="127.0.0.1") == port
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "controlplane_dispatch_latency_seconds" in body
    assert "controlplane_runs_supervised" in body
    # A second worker on the same port logs the clash and carries on without an endpoint.
    monkeypatch.setattr(worker_metrics, "_server_port", None)
    assert worker_metrics.start_server(port, addr="127.0.0.1") is None
