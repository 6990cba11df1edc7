"""workers.sampling: CPU and memory of a real process group read from /proc, GPU series only where
NVML answers, whole-second steps since launch, and nothing once the group is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.utils import timezone

from ops.gpu import load_nvml
from runs.batches import Batch
from workers.sampling import SystemSampler, gpu_indices, read_group

# A parent that spins one core and forks a child that holds ~60 MiB: both in the parent's group.
BUSY_GROUP = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "b = bytearray(60 * 2**20); import time; time.sleep(60)"])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    pass
"""


@pytest.fixture
def busy_group() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", BUSY_GROUP], start_new_session=True)
    # Until the child is there and has touched its memory.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        group = read_group(process.pid)
        if (
            len(group) == 2
            and sum(pages for _, pages in group.values()) * os.sysconf("SC_PAGE_SIZE") > 70 * 2**20
        ):
            break
        time.sleep(0.1)
    try:
        yield process.pid
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def values_of(batch: Batch) -> dict[str, list[tuple[int, float | None]]]:
    found: dict[str, list[tuple[int, float | None]]] = {}
    for key, step, value, _ in batch.points:
        found.setdefault(key, []).append((step, value))
    return found


def test_a_sample_measures_the_cpu_and_memory_of_the_whole_process_group(busy_group: int) -> None:
    sampler = SystemSampler(busy_group, every=1, launched_at=timezone.now())
    time.sleep(1.5)
    values = sampler.sample(time.monotonic())
    cores = os.cpu_count() or 1
    # One spinning process on a shared machine: well above idle, never more than every core.
    assert 10 <= values["system/cpu_percent"] <= 100 * cores + 5
    # The child's 60 MiB count in the group's resident memory, plus two interpreters.
    assert 70 <= values["system/rss_mib"] < 1024
    assert not any(key.startswith("system/gpu") for key in values)


def test_samples_are_due_every_interval_with_steps_in_whole_seconds_since_launch(busy_group: int) -> None:
    launched = timezone.now() - timedelta(seconds=100)
    sampler = SystemSampler(busy_group, every=1, launched_at=launched)
    batch = Batch()
    start = time.monotonic()
    assert not sampler.sample_if_due(start, batch)  # the first interval has not passed
    assert sampler.sample_if_due(start + 1.01, batch)
    assert not sampler.sample_if_due(start + 1.5, batch)
    assert sampler.sample_if_due(start + 2.02, batch)
    series = values_of(batch)
    assert set(series) == {"system/cpu_percent", "system/rss_mib"}
    steps = [step for step, _ in series["system/rss_mib"]]
    assert 100 <= steps[0] <= 110 and steps[1] > steps[0]  # two samples in one second: no repeat


def test_nothing_is_sampled_once_the_group_is_gone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    process.wait()
    sampler = SystemSampler(process.pid, every=1, launched_at=timezone.now())
    batch = Batch()
    assert read_group(process.pid) == {}
    assert not sampler.sample_if_due(time.monotonic() + 5, batch)
    assert batch.points == []


def test_a_sampler_is_off_when_the_setting_is_zero() -> None:
    assert SystemSampler.for_program(os.getpid(), every=0, launched_at=timezone.now(), assigned=(0,)) is None


@pytest.mark.skipif(load_nvml() is not None, reason="NVML answers on this host")
def test_without_nvml_the_assigned_gpus_are_not_sampled_and_cpu_still_is(busy_group: int) -> None:
    sampler = SystemSampler.for_program(busy_group, every=1, launched_at=timezone.now(), assigned=(0, 1))
    assert sampler is not None
    assert sampler.gpus == () and sampler.nvml is None
    values = sampler.sample(time.monotonic() + 1)
    assert set(values) == {"system/cpu_percent", "system/rss_mib"}


class FakeNvml:
    """NVML's calls as pynvml names them, for the two devices of a host without GPUs; device 3
    has fallen off the bus."""

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # NVML's own names
        if index == 3:
            raise RuntimeError("GPU is lost")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=40 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=(handle + 1) * 1024 * 2**20, total=80 * 2**30)


def test_only_the_runs_own_gpus_are_sampled_by_host_index_and_a_lost_one_is_skipped() -> None:
    sampler = SystemSampler(os.getpid(), every=1, launched_at=timezone.now(), gpus=(2, 3), nvml=FakeNvml())
    values = sampler.sample(time.monotonic() + 1)
    assert values["system/gpu2/util_percent"] == 42.0
    assert values["system/gpu2/memory_mib"] == 3072.0
    assert not any("gpu3" in key or "gpu0" in key for key in values)
    # Still lost at the next sample: still skipped (and logged only the first time).
    again = sampler.sample(time.monotonic() + 2)
    assert "system/gpu2/util_percent" in again and not any("gpu3" in key for key in again)


def test_without_a_reservation_the_workers_numeric_visible_devices_are_sampled() -> None:
    assert gpu_indices((1, 3), {"CUDA_VISIBLE_DEVICES": "0"}) == (1, 3)
    assert gpu_indices((), {"CUDA_VISIBLE_DEVICES": "0"}) == ()  # a CPU slot of the fleet
    assert gpu_indices(None, {"CUDA_VISIBLE_DEVICES": "0, 2"}) == (0, 2)
    assert gpu_indices(None, {"CUDA_VISIBLE_DEVICES": "GPU-5f3c"}) == ()  # UUIDs: not NVML indexes
    assert gpu_indices(None, {}) == ()


def test_a_process_name_with_spaces_and_parentheses_is_parsed(tmp_path: Path) -> None:
    odd = tmp_path / "a (b) c"
    odd.symlink_to(sys.executable)
    process = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not read_group(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        ((pid, _), (_, pages)) = next(iter(read_group(process.pid).items()))
        assert pid == process.pid and pages > 0
    finally:
        process.kill()
        process.wait()


def test_the_group_is_read_from_proc_skipping_other_groups_vanished_and_unreadable_entries(
    tmp_path: Path,
) -> None:
    def stat(pid: int, pgrp: int, ticks: tuple[int, int], rss: int, name: str = "python") -> str:
        # Fields from the state on (proc(5) 3..24): state ppid pgrp session tty tpgid flags
        # minflt cminflt majflt cmajflt utime stime cutime cstime priority nice threads
        # itrealvalue starttime vsize rss.
        after = ["S", "1", str(pgrp), "1", "0", "-1", "0", "0", "0", "0", "0", str(ticks[0]), str(ticks[1])]
        after += ["0", "0", "20", "0", "1", "0", "4242", "1000", str(rss)]
        return f"{pid} ({name}) " + " ".join(after)

    proc = tmp_path / "proc"
    for pid, text in {
        "100": stat(100, 100, (30, 12), 500, name="trainer) (x"),
        "101": stat(101, 100, (5, 0), 250),
        "200": stat(200, 200, (99, 99), 999),  # another group
        "300": "300 (short) S 1",  # truncated: ignored
    }.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "stat").write_text(text)
    (proc / "400").mkdir()  # ended between the listing and the read: no stat file
    (proc / "500" / "stat").mkdir(parents=True)  # opens, but reading fails
    (proc / "self").mkdir()  # not a process number
    assert read_group(100, proc) == {(100, 4242): (42, 500), (101, 4242): (5, 250)}
    assert read_group(100, tmp_path / "no-proc") == {}  # not Linux: no CPU or memory series
