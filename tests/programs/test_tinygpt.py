"""End-to-end tests of the tinygpt program, run as the supervisor runs it.

Each run is a real subprocess: cwd is a fresh run dir, the parameters come
from a JSON file, and events arrive on a pipe passed with ``pass_fds``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from workers.programs.tinygpt.schema import PARAMS, ConfigError, resolve_params

REPO = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "workers.programs.tinygpt"]

# Small enough to train in well under a second; 60 steps so that a run
# stalled right after its first checkpoint cannot finish on buffered events.
SMALL: dict[str, Any] = {
    "steps": 60,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "seq_len": 32,
    "batch_size": 8,
    "warmup_steps": 5,
    "eval_every": 20,
    "checkpoint_every": 10,
    "seed": 7,
    "device": "cpu",
}


@dataclass
class Run:
    run_dir: Path
    returncode: int
    stdout: str
    stderr: str
    raw_events: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw_events.decode("utf-8").splitlines()]

    @property
    def model(self) -> Path:
        return self.run_dir / "model.safetensors"


def _env(run_dir: Path, params_file: Path, events_fd: int | None, resume: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROLPLANE_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "CONTROLPLANE_RUN_ID": run_dir.name,
            "CONTROLPLANE_RUN_DIR": str(run_dir),
            "CONTROLPLANE_PARAMS": str(params_file),
            "CONTROLPLANE_REQUEST_ID": "test-request",
            # One thread: these models are too small to gain from more, and on a
            # shared 2-core box idle OpenMP threads spinning on barriers slow runs badly.
            "CONTROLPLANE_NUM_THREADS": "1",
        }
    )
    if events_fd is not None:
        env["CONTROLPLANE_EVENTS_FD"] = str(events_fd)
    if resume is not None:
        env["CONTROLPLANE_RESUME_FROM"] = resume
    return env


def _write_params(run_dir: Path, params: Mapping[str, Any], *, resolve: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    # The params file lives beside the run dir, as the supervisor keeps it out of the program's way.
    params_file = run_dir.parent / f"{run_dir.name}-params.json"
    params_file.write_text(json.dumps(resolve_params(params) if resolve else dict(params)))
    return params_file


def run_program(
    run_dir: Path,
    params: Mapping[str, Any],
    *,
    resume: str | None = None,
    events: bool = True,
    resolve: bool = True,
) -> Run:
    params_file = _write_params(run_dir, params, resolve=resolve)
    if not events:
        proc = subprocess.run(
            COMMAND,
            cwd=run_dir,
            env=_env(run_dir, params_file, None, resume),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return Run(run_dir, proc.returncode, proc.stdout, proc.stderr, b"")

    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.run(
            COMMAND,
            cwd=run_dir,
            env=_env(run_dir, params_file, write_fd, resume),
            pass_fds=(write_fd,),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_fd)
        reader.join(timeout=30)
        os.close(read_fd)
    return Run(run_dir, proc.returncode, proc.stdout, proc.stderr, b"".join(chunks))


def _assert_ok(run: Run) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.model.is_file()


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = run_program(tmp_path_factory.mktemp("baseline") / "run", SMALL)
    _assert_ok(run)
    return run


# -- schema -------------------------------------------------------------------------


def test_schema_import_does_not_pull_in_torch() -> None:
    code = (
        "import sys, workers.programs.tinygpt.schema as s, workers.programs.tinygpt as p, workers.sdk; "
        "assert s.PARAMS and p.DESCRIPTION; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_schema_is_complete_and_defaults_are_valid() -> None:
    expected = {
        "steps", "batch_size", "seq_len", "d_model", "n_layers", "n_heads", "lr", "warmup_steps",
        "weight_decay", "grad_clip", "seed", "eval_every", "checkpoint_every", "device", "precision",
        "dataset_url", "dataset_sha256",
    }  # fmt: skip
    assert set(PARAMS) == expected
    for name, spec in PARAMS.items():
        assert spec["type"] in {"integer", "number", "string"}, name
        assert spec["description"], name
        assert "default" in spec, name
        if spec["type"] != "string":
            assert "maximum" in spec, name
            assert "minimum" in spec or "exclusiveMinimum" in spec, name
    assert PARAMS["device"]["enum"] == ["auto", "cpu", "cuda"]
    assert PARAMS["precision"]["enum"] == ["fp32", "bf16"]
    assert PARAMS["d_model"]["maximum"] <= 4096
    assert PARAMS["steps"]["maximum"] <= 10_000_000
    assert resolve_params({}) == {name: spec["default"] for name, spec in PARAMS.items()}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"steps": 0}, "steps"),
        ({"lr": 0}, "lr"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": True}, "batch_size"),
        ({"colour": "blue"}, "unknown"),
    ],
)
def test_resolve_params_rejects(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_params(params)


# -- the program ----------------------------------------------------------------------


def test_loss_falls(baseline: Run) -> None:
    losses = [
        e["values"]["train/loss"]
        for e in baseline.events
        if e["type"] == "metric" and "train/loss" in e["values"]
    ]
    assert len(losses) == SMALL["steps"]
    first, last = losses[0], losses[-1]
    print(f"train/loss first={first:.4f} last={last:.4f}")
    # A fresh byte-level model starts near ln(256) ~ 5.55.
    assert first > 5.0
    assert last < first - 1.5
    assert float(_metadata(baseline.model)["final_val_loss"]) < first - 1.5


def test_events_are_valid_json_lines_with_documented_shapes(baseline: Run) -> None:
    raw = baseline.raw_events
    assert raw.endswith(b"\n")
    events = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    steps: int = SMALL["steps"]
    allowed_keys = {
        "metric": {"type", "step", "values"},
        "progress": {"type", "step", "total"},
        "checkpoint": {"type", "step", "path"},
        "artifact": {"type", "path", "kind"},
        "status": {"type", "phase"},
    }
    for event in events:
        if event["type"] == "status" and event["phase"] == "loading":
            assert event.pop("device") == "cpu fp32"  # the first status names the device
        assert set(event) == allowed_keys[event["type"]], event
        if "step" in event:
            assert isinstance(event["step"], int)
            assert 0 <= event["step"] <= steps
        if event["type"] == "metric":
            assert event["values"]
            for value in event["values"].values():
                assert value is None or (isinstance(value, float | int) and math.isfinite(value))
        if "path" in event:
            assert not Path(event["path"]).is_absolute()
            assert (baseline.run_dir / event["path"]).is_file(), event

    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)

    assert [e["step"] for e in by_type["progress"]] == list(range(1, steps + 1))
    assert {e["total"] for e in by_type["progress"]} == {steps}

    train = [e for e in by_type["metric"] if "train/loss" in e["values"]]
    assert [e["step"] for e in train] == list(range(1, steps + 1))
    for event in train:
        assert set(event["values"]) == {"train/loss", "lr", "tokens_per_s", "step_time_ms"}
        assert event["values"]["lr"] > 0
        assert event["values"]["tokens_per_s"] > 0
    val_steps = [e["step"] for e in by_type["metric"] if "val/loss" in e["values"]]
    assert val_steps == [20, 40, 60]

    assert [(e["step"], e["path"]) for e in by_type["checkpoint"]] == [
        (n, f"checkpoints/step-{n}.pt") for n in range(10, steps + 1, 10)
    ]
    assert by_type["artifact"] == [{"type": "artifact", "path": "model.safetensors", "kind": "model"}]
    assert events[-1]["type"] == "artifact"

    phases = [e["phase"] for e in by_type["status"]]
    assert phases[0] == "loading"
    assert set(phases) == {"loading", "training", "evaluating", "saving"}
    assert phases[-1] == "saving"


def test_metadata(baseline: Run) -> None:
    metadata = _metadata(baseline.model)
    assert metadata["format"] == "tinygpt/1"
    assert json.loads(metadata["config"]) == resolve_params(SMALL)
    assert metadata["step"] == str(SMALL["steps"])
    assert len(metadata["dataset_sha256"]) == 64
    assert len(metadata["code_version"]) == 64
    assert math.isfinite(float(metadata["final_train_loss"]))


def test_same_seed_is_byte_identical_with_or_without_reporting(baseline: Run, tmp_path: Path) -> None:
    again = run_program(tmp_path / "again", SMALL, events=False)
    _assert_ok(again)
    assert again.model.read_bytes() == baseline.model.read_bytes()

    other_seed = run_program(
        tmp_path / "other", {**SMALL, "seed": SMALL["seed"] + 1, "steps": 5}, events=False
    )
    _assert_ok(other_seed)
    assert _metadata(other_seed.model)["final_train_loss"] != _metadata(baseline.model)["final_train_loss"]


def _run_until_checkpoint_then_kill(run_dir: Path, params: Mapping[str, Any], checkpoint_step: int) -> None:
    """Start a run, and kill it while it is stalled just after its checkpoint at ``checkpoint_step``."""
    params_file = _write_params(run_dir, params)
    read_fd, write_fd = os.pipe()
    # A one-page pipe that we stop draining stalls the program a few steps
    # after the checkpoint, so the kill lands mid-run deterministically.
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    with open(run_dir / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            COMMAND,
            cwd=run_dir,
            env=_env(run_dir, params_file, write_fd, None),
            pass_fds=(write_fd,),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as events:
            for line in _lines(events):
                event = json.loads(line)
                if event["type"] == "checkpoint" and event["step"] == checkpoint_step:
                    break
            else:
                pytest.fail("program ended without the expected checkpoint")
            proc.kill()
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _lines(stream: Any) -> Iterator[bytes]:
    # Byte-at-a-time reads so we consume nothing past the line we act on.
    buffer = bytearray()
    while byte := stream.read(1):
        if byte == b"\n":
            yield bytes(buffer)
            buffer.clear()
        else:
            buffer += byte


def test_resume_after_kill_is_byte_identical(baseline: Run, tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    run_dir.mkdir()
    _run_until_checkpoint_then_kill(run_dir, SMALL, checkpoint_step=10)
    assert (run_dir / "checkpoints" / "step-10.pt").is_file()
    assert not (run_dir / "model.safetensors").exists(), "the run finished before it could be interrupted"

    resumed = run_program(run_dir, SMALL, resume="checkpoints/step-10.pt")
    _assert_ok(resumed)
    assert "resuming from step 10" in resumed.stdout
    progress = [e["step"] for e in resumed.events if e["type"] == "progress"]
    assert progress == list(range(11, SMALL["steps"] + 1))
    assert resumed.model.read_bytes() == baseline.model.read_bytes()


def test_resume_from_absolute_path_inside_run_dir(baseline: Run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    checkpoint = run_dir / "checkpoints" / "step-50.pt"
    checkpoint.write_bytes((baseline.run_dir / "checkpoints" / "step-50.pt").read_bytes())
    resumed = run_program(run_dir, SMALL, resume=str(checkpoint))
    _assert_ok(resumed)
    assert resumed.model.read_bytes() == baseline.model.read_bytes()


def test_evaluate_safetensors_reproduces_final_val_loss(baseline: Run) -> None:
    from workers.programs.tinygpt.evaluate import evaluate_safetensors

    recorded = float(_metadata(baseline.model)["final_val_loss"])
    assert evaluate_safetensors(baseline.model) == pytest.approx(recorded, abs=1e-6)
    last_val = [e for e in baseline.events if e["type"] == "metric" and "val/loss" in e["values"]][-1]
    assert last_val["values"]["val/loss"] == pytest.approx(recorded, abs=1e-12)


def _assert_config_error(run: Run, fragment: str) -> None:
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("config error:")
    assert fragment in lines[0]
    assert not run.model.exists()


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"d_model": 30, "n_heads": 4}, "divisible by n_heads"),
        ({"steps": -1}, "steps"),
        ({"optimizer": "sgd"}, "unknown parameter"),
    ],
)
def test_config_errors_exit_2(tmp_path: Path, params: dict[str, Any], fragment: str) -> None:
    run = run_program(tmp_path / "run", params, resolve=False)
    _assert_config_error(run, fragment)


def test_cuda_requested_without_cuda_is_a_config_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    run = run_program(tmp_path / "run", {**SMALL, "device": "cuda"})
    _assert_config_error(run, "CUDA is not available")


def test_resume_path_outside_run_dir_is_refused(baseline: Run, tmp_path: Path) -> None:
    outside = baseline.run_dir / "checkpoints" / "step-10.pt"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "sneaky.pt").symlink_to(outside)
    for resume in (str(outside), os.path.relpath(outside, run_dir), "sneaky.pt", "/etc/passwd"):
        run = run_program(run_dir, SMALL, resume=resume)
        _assert_config_error(run, "outside the run directory")


def test_sigterm_stops_at_a_step_boundary_after_a_final_checkpoint(baseline: Run, tmp_path: Path) -> None:
    """The soft time limit and cancel: SIGTERM loses no step that a resume would need."""
    run_dir = tmp_path / "run"
    params_file = _write_params(run_dir, {**SMALL, "steps": 100_000, "checkpoint_every": 0})
    process = subprocess.Popen(
        COMMAND,
        cwd=run_dir,
        env=_env(run_dir, params_file, None, None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    # Wait until training is under way (the header line is printed once the model exists).
    assert "tinygpt:" in process.stdout.readline()
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    assert len(checkpoints) == 1
    step = int(checkpoints[0].stem.split("-")[1])
    assert step > 0
    assert f"stopping at step {step}" in stdout


def test_a_staged_dataset_is_trained_on_and_hashed(tmp_path: Path) -> None:
    corpus = ("a staged corpus line about gradient descent.\n" * 400).encode()
    dataset = tmp_path / "corpus.txt"
    dataset.write_bytes(corpus)
    run_dir = tmp_path / "run"
    params_file = _write_params(run_dir, {**SMALL, "steps": 5, "checkpoint_every": 0})
    env = {**_env(run_dir, params_file, None, None), "CONTROLPLANE_DATASET_PATH": str(dataset)}
    result = subprocess.run(
        COMMAND, cwd=run_dir, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert _metadata(run_dir / "model.safetensors")["dataset_sha256"] == hashlib.sha256(corpus).hexdigest()


def test_a_dataset_too_small_is_a_data_error(tmp_path: Path) -> None:
    dataset = tmp_path / "tiny.txt"
    dataset.write_bytes(b"too small")
    run_dir = tmp_path / "run"
    params_file = _write_params(run_dir, {**SMALL, "steps": 5})
    env = {**_env(run_dir, params_file, None, None), "CONTROLPLANE_DATASET_PATH": str(dataset)}
    result = subprocess.run(
        COMMAND, cwd=run_dir, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 3
    assert result.stderr.strip().startswith("data error: the dataset has 9 bytes")


def test_a_pickle_payload_posing_as_a_checkpoint_is_refused_without_running(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-5.pt").write_bytes(pickle.dumps(Payload()))
    run = run_program(run_dir, {**SMALL, "steps": 10}, resume="checkpoints/step-5.pt", events=False)
    assert run.returncode == 2
    assert "config error: cannot read checkpoint step-5.pt: UnpicklingError" in run.stderr
    assert not marker.exists()
