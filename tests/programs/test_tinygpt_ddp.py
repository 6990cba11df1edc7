"""tinygpt under torchrun: two gloo processes on CPU, reporting through the events socket.

The 2-process run ends at the 1-process run's final val/loss within VAL_LOSS_TOLERANCE (the
justification is in docs/distributed.md: the same samples and the same mean gradient, so only the
order of floating-point sums differs); a 2-process run stopped by SIGTERM mid-run (its final
checkpoint agreed by both ranks) and resumed ends byte-identical to its uninterrupted 2-process
run. Real processes, torchrun as the supervisor starts it; no database.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, train_reference_tinygpt, wait_for
from workers.events_socket import EventsSocket
from workers.proctree import signal_tree
from workers.streams import Chunk, ChunkQueue

pytestmark = pytest.mark.slow

PARAMS: dict[str, Any] = {
    "steps": 60,
    "batch_size": 4,
    "seq_len": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "eval_every": 30,
    "checkpoint_every": 6,
    "warmup_steps": 2,
    "device": "cpu",
}
# Relative: measured 4.7e-9 on this config (docs/distributed.md); 1e-4 leaves room for other BLAS
# builds while still failing on any real difference (a wrong split moves it by 1e-2 and more).
VAL_LOSS_TOLERANCE = 1e-4


@dataclass
class Finished:
    returncode: int
    stdout: str
    events: list[dict[str, Any]]


def torchrun(run_dir: Path, *, resume: str | None = None, stop_after: str | None = None) -> Finished:
    """Two tinygpt processes under torchrun, as workers/launch.py starts them; SIGTERM to the
    whole tree (as a cancel) once `stop_after` (a run-relative file) exists."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "params.json").write_text(json.dumps(PARAMS))
    chunks: queue.Queue[Chunk] = ChunkQueue()
    started: list[subprocess.Popen[bytes]] = []
    channel = EventsSocket(run_dir, chunks, 1024 * 1024, lambda: not started or started[0].poll() is None)
    channel.bind()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "CONTROLPLANE_PARAMS": str(run_dir / "params.json"),
        "CONTROLPLANE_RUN_DIR": str(run_dir),
        "CONTROLPLANE_EVENTS_SOCKET": str(channel.path),
        **({"CONTROLPLANE_RESUME_FROM": resume} if resume else {}),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    command += ["--nproc-per-node=2", "--max-restarts=0", "--no-python", sys.executable]
    command += ["-m", "workers.programs.tinygpt"]
    process = subprocess.Popen(
        command,
        cwd=run_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started.append(process)
    channel.start("test-events")
    if stop_after is not None:
        wait_for(lambda: (run_dir / stop_after).exists() or process.poll() is not None, 240, interval=0.02)
        signal_tree(process.pid, signal.SIGTERM)
    stdout = process.communicate(timeout=300)[0].decode()
    lines: list[bytes] = []
    while (chunk := chunks.get(timeout=30)).data is not None:
        lines.append(chunk.data)
    return Finished(process.returncode, stdout, [json.loads(line) for line in lines])


def model_metadata(run_dir: Path) -> dict[str, str]:
    data = (run_dir / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    metadata: dict[str, str] = json.loads(data[8 : 8 + size])["__metadata__"]
    return metadata


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Finished]:
    run_dir = tmp_path_factory.mktemp("ddp-uninterrupted")
    return run_dir, torchrun(run_dir)


def test_two_gloo_processes_end_at_the_one_process_val_loss_and_report_once(
    uninterrupted: tuple[Path, Finished], tmp_path: Path
) -> None:
    run_dir, finished = uninterrupted
    assert finished.returncode == 0, finished.stdout[-3000:]
    train_steps = [
        e["step"] for e in finished.events if e["type"] == "metric" and "train/loss" in e["values"]
    ]
    assert train_steps == list(range(1, 61))  # rank 0 alone reports
    assert [e["path"] for e in finished.events if e["type"] == "artifact"] == ["model.safetensors"]
    assert len([e for e in finished.events if e["type"] == "checkpoint"]) == 10
    assert "[rank 1/2] tinygpt" in finished.stdout

    reference = tmp_path / "one-process"
    reference.mkdir()
    train_reference_tinygpt(reference, PARAMS)
    one = float(model_metadata(reference)["final_val_loss"])
    two = float(model_metadata(run_dir)["final_val_loss"])
    reported = [
        e["values"]["val/loss"]
        for e in finished.events
        if e["type"] == "metric" and "val/loss" in e["values"]
    ]
    assert reported[-1] == pytest.approx(two, abs=1e-12)
    assert abs(two - one) <= VAL_LOSS_TOLERANCE * one, (one, two)


def test_a_two_process_run_stopped_mid_run_and_resumed_ends_byte_identical(
    uninterrupted: tuple[Path, Finished], tmp_path: Path
) -> None:
    stopped = torchrun(tmp_path, stop_after="checkpoints/step-6.pt")
    steps = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    assert 6 < steps[-1] < 60, stopped.stdout[-3000:]  # the final checkpoint of the stop, both ranks agreeing
    assert "stopping at step" in stopped.stdout
    assert not (tmp_path / "model.safetensors").exists()

    started = time.monotonic()
    resumed = torchrun(tmp_path, resume=f"checkpoints/step-{steps[-1]}.pt")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resuming from step {steps[-1]}" in resumed.stdout
    assert time.monotonic() - started < 300
    assert sha256(tmp_path / "model.safetensors") == sha256(uninterrupted[0] / "model.safetensors")
