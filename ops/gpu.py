"""GPU memory and utilization per device, read through NVML at scrape time.

Only where the NVML bindings (`pynvml`, shipped by the `nvidia-ml-py` package) import and report
at least one GPU; elsewhere nothing is registered and no GPU series exist. The bindings are not a
dependency of the product: GPU hosts install them next to their driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import structlog
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ops.metrics import GPU_MEMORY_TOTAL, GPU_MEMORY_USED, GPU_UTILIZATION

log = structlog.get_logger(__name__)
_FAMILIES = (GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_UTILIZATION)


def load_nvml() -> ModuleType | None:
    """The initialized NVML module when it imports and sees a GPU, else None."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
        if int(nvml.nvmlDeviceGetCount()) < 1:
            return None
    except Exception as error:  # NVMLError has many subclasses (no driver, no device, ...)
        log.info("gpu_metrics_unavailable", error=str(error)[:200])
        return None
    return nvml


class NvmlCollector(Collector):
    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml

    def describe(self) -> Iterator[Metric]:
        for family in _FAMILIES:
            yield family.build()

    def collect(self) -> Iterator[Metric]:
        used, total, utilization = (family.build() for family in _FAMILIES)
        try:
            for index in range(int(self.nvml.nvmlDeviceGetCount())):
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                # The GPU index, not its UUID or name: bounded, and what CUDA_VISIBLE_DEVICES uses.
                label = [str(index)]
                used.add_metric(label, float(memory.used))
                total.add_metric(label, float(memory.total))
                utilization.add_metric(label, float(rates.gpu) / 100.0)
        except Exception as error:  # a GPU that fell off the bus must not break the scrape
            log.warning("gpu_metrics_failed", error=str(error)[:200])
            return
        yield used
        yield total
        yield utilization


_registered: NvmlCollector | None = None


def register(registry: CollectorRegistry = REGISTRY) -> NvmlCollector | None:
    """Register the GPU collector once, when NVML and a GPU are there; returns it or None."""
    global _registered
    if _registered is None:
        nvml = load_nvml()
        if nvml is None:
            return None
        _registered = NvmlCollector(nvml)
        registry.register(_registered)
    return _registered
