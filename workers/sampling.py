"""System metrics of a running program: CPU and memory of its process group, and its GPUs.

Every `CONTROLPLANE_SYSTEM_METRICS_SECONDS` (0: never) the watch loop (workers/watch.py) asks the
sampler for one sample while the program runs. The sample becomes metric points of the run, added
to the batch being built, so they take the ingest path of the program's own points: the same
fencing by attempt, the same transaction, the same websocket frame.

- `system/cpu_percent`: CPU time of every process of the program's group (the guardian, the
  program and whatever it forks) over the interval, in percent of one core (so up to 100 x cores).
  Read from /proc (Linux); a process that ends between two samples loses its last partial interval.
- `system/rss_mib`: resident memory of those processes, summed (pages shared between them, such as
  a forked DataLoader's copy-on-write pages, count once per process, as `ps` shows them).
- `system/gpu{i}/util_percent`, `system/gpu{i}/memory_mib`: for each device the fleet assigned to
  the run (i is the host's index, as the Workers page shows it), through NVML where it initialises.

A point's step is the whole seconds since the run was launched, so an attempt resumed later goes
on where the last one stopped and repeated steps never collide. Nothing here raises into the loop:
a /proc or NVML read that fails leaves its series out of that sample.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from django.utils import timezone

from ops.gpu import load_nvml
from runs.batches import Batch

log = structlog.get_logger(__name__)
PROC = Path("/proc")
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# Fields of /proc/<pid>/stat after the command name, counted from the state (field 3 of proc(5)).
_PGRP, _UTIME, _STIME, _START, _RSS = 2, 11, 12, 19, 21

ProcessKey = tuple[int, int]  # (pid, start time in ticks): a reused pid is another process


def read_group(pgid: int, proc: Path = PROC) -> dict[ProcessKey, tuple[int, int]]:
    """Every process of group `pgid`: its CPU ticks (user + system) and resident pages.

    Every process's stat is read to learn its group (Linux lists no group's members): plain
    os.open/os.read, about half the cost of pathlib's, ~10 ms for 130 processes on a loaded
    2-core machine, once per sample."""
    found: dict[ProcessKey, tuple[int, int]] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return found  # no /proc (not Linux): no CPU or memory series
    root = str(proc)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            descriptor = os.open(f"{root}/{entry}/stat", os.O_RDONLY)
        except OSError:
            continue  # ended since the listing
        try:
            raw = os.read(descriptor, 4096)
        except OSError:
            continue  # ended while being read
        finally:
            os.close(descriptor)
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) <= _RSS or int(fields[_PGRP]) != pgid:
            continue
        ticks = int(fields[_UTIME]) + int(fields[_STIME])
        found[(int(entry), int(fields[_START]))] = (ticks, int(fields[_RSS]))
    return found


def gpu_indices(assigned: tuple[int, ...] | None, environ: dict[str, str] | None = None) -> tuple[int, ...]:
    """The host GPU indices to sample: the fleet's reservation, else (a run dispatched without the
    fleet) the worker's own numeric CUDA_VISIBLE_DEVICES, else none."""
    if assigned is not None:
        return assigned
    visible = (environ if environ is not None else dict(os.environ)).get("CUDA_VISIBLE_DEVICES", "")
    items = [item.strip() for item in visible.split(",") if item.strip()]
    return tuple(int(item) for item in items) if items and all(i.isdigit() for i in items) else ()


class SystemSampler:
    def __init__(
        self,
        pgid: int,
        *,
        every: float,
        launched_at: datetime,
        gpus: Iterable[int] = (),
        nvml: Any = None,
        proc: Path = PROC,
    ) -> None:
        self.pgid = pgid
        self.every = every
        self.gpus = tuple(gpus)
        self.nvml = nvml
        self.proc = proc
        self._origin = launched_at.timestamp()
        self._last_step = -1
        self._failed_gpus: set[int] = set()
        self._previous: dict[ProcessKey, tuple[int, int]] = read_group(pgid, proc)
        self._previous_at = time.monotonic()
        self._next = self._previous_at + every

    @classmethod
    def for_program(
        cls, pgid: int, *, every: float, launched_at: datetime, assigned: tuple[int, ...] | None
    ) -> SystemSampler | None:
        """A sampler of the program's group, None when disabled (`every` is 0); NVML only when
        the run has GPUs to sample and the bindings initialise."""
        if every <= 0:
            return None
        gpus = gpu_indices(assigned)
        nvml = load_nvml() if gpus else None
        return cls(pgid, every=every, launched_at=launched_at, gpus=gpus if nvml else (), nvml=nvml)

    def sample_if_due(self, now: float, batch: Batch) -> bool:
        """Add a sample's points to `batch` when one is due; whether it did."""
        if now < self._next:
            return False
        self._next = now + self.every
        values = self.sample(now)
        if not values:
            return False
        # Whole seconds since launch, never repeated within the attempt (a repeated step in one
        # batch keeps only its last value).
        step = max(self._last_step + 1, int(time.time() - self._origin))
        self._last_step = step
        stamp = timezone.now()
        batch.points.extend((key, step, value, stamp) for key, value in values.items())
        return True

    def sample(self, now: float) -> dict[str, float]:
        """One sample: the group's CPU % since the previous one and its RSS, then the GPUs."""
        current = read_group(self.pgid, self.proc)
        values: dict[str, float] = {}
        if current:
            elapsed = max(now - self._previous_at, 1e-6)
            # A process new since the last sample counts all of its ticks: it began in between.
            ticks = sum(t - self._previous.get(key, (0, 0))[0] for key, (t, _) in current.items())
            values["system/cpu_percent"] = round(100.0 * ticks / CLOCK_TICKS / elapsed, 2)
            rss_pages = sum(pages for _, pages in current.values())
            values["system/rss_mib"] = round(rss_pages * PAGE_BYTES / MIB, 2)
        self._previous, self._previous_at = current, now
        values.update(self._gpu_values())
        return values

    def _gpu_values(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for index in self.gpus:
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as error:  # NVMLError has many kinds (a GPU fell off the bus)
                if index not in self._failed_gpus:  # once per device, not every few seconds
                    self._failed_gpus.add(index)
                    log.warning("gpu_sample_failed", gpu=index, error=str(error)[:200])
                continue
            values[f"system/gpu{index}/util_percent"] = float(rates.gpu)
            values[f"system/gpu{index}/memory_mib"] = round(float(memory.used) / MIB, 2)
        return values
