"""The GPU smoke's parts that run without a GPU: its refusal, and the all-reduce check on gloo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the smoke runs for real")
def test_without_a_gpu_the_smoke_says_so_in_one_line_and_exits_2() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_smoke.sh")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("gpu_smoke: no CUDA device") and done.stderr.count("\n") == 1


def test_the_allreduce_check_is_exact_across_two_processes_on_gloo() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "scripts" / "allreduce_check.py"),
            "--backend",
            "gloo",
            "--mib",
            "1",
            "--iterations",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]  # rank 0 only
    result = json.loads(line)
    assert (result["backend"], result["world_size"], result["correct"], result["mib"]) == (
        "gloo",
        2,
        True,
        1.0,
    )
    assert result["bus_gb_per_s"] > 0
