"""What a worker offers: its GPUs (declared or discovered through NVML) or its CPU slots.

`CONTROLPLANE_WORKER_GPUS` lists the indices a worker may hand out; unset ("auto") means every GPU
NVML sees; an empty value means none. A declared index NVML does not see is refused with an error
in the log and left out, so the scheduler never places a run on a device that is not there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import structlog
from django.conf import settings

from fleet.models import DeviceKind
from ops.gpu import load_nvml

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    index: int
    kind: str
    model: str = ""
    memory_bytes: int | None = None


def _nvml_devices(nvml: Any) -> dict[int, DeviceSpec]:
    found: dict[int, DeviceSpec] = {}
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        model = name.decode() if isinstance(name, bytes) else str(name)
        memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        found[index] = DeviceSpec(index, DeviceKind.GPU, model[:128], memory)
    return found


def parse_indices(text: str) -> list[int]:
    """`0,1,2,3` → [0, 1, 2, 3]; raises ValueError on anything else."""
    indices = [int(part) for part in text.replace(" ", "").split(",") if part]
    if any(index < 0 or index > 1023 for index in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"device indices must be distinct integers 0-1023, got {text!r}")
    return indices


def discover(declared: str | None = None, slots: int | None = None) -> list[DeviceSpec]:
    """The devices this worker offers: GPUs, or (none found or declared) its CPU slots."""
    declared = str(settings.FLEET["WORKER_GPUS"]) if declared is None else declared
    nvml = load_nvml()
    seen = _nvml_devices(nvml) if nvml is not None else {}
    if declared.strip().lower() == "auto":
        gpus = list(seen.values())
    else:
        gpus = []
        for index in parse_indices(declared):
            if index in seen:
                gpus.append(seen[index])
            elif nvml is None:
                # No NVML here (tests, odd hosts): the declaration is taken as it is.
                gpus.append(DeviceSpec(index, DeviceKind.GPU))
            else:
                log.error(
                    "worker_gpu_not_found",
                    declared=index,
                    seen=sorted(seen),
                    hint="CONTROLPLANE_WORKER_GPUS names a GPU NVML does not see; it is not offered",
                )
    if gpus:
        # CPU slots on a GPU worker only when asked for explicitly.
        extra = int(os.environ.get("CONTROLPLANE_WORKER_SLOTS", "0") or 0) if slots is None else 0
        return gpus + [DeviceSpec(1000 + n, DeviceKind.SLOT) for n in range(extra)]
    count = int(settings.FLEET["WORKER_SLOTS"] or 1) if slots is None else slots
    return [DeviceSpec(n, DeviceKind.SLOT) for n in range(count)]
