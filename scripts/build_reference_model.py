"""Train the reference tinygpt model, verify it, and write it out with its checksum and metadata.

Usage: ``python scripts/build_reference_model.py [--out DIR] [--steps N] [--threads N]``

The program runs exactly as a supervisor runs it (a subprocess, params from a JSON file, events on
a pipe), on CPU with fixed params, so the build needs no GPU and no services. The model is then
verified independently of the run that produced it: the file loads, its tensors are finite, its
metadata names the params it was trained with, and evaluating it reproduces the training's final
``val/loss`` (the same evaluation procedure, on the same weights, on the same thread count).

Writes ``model.safetensors``, ``model.safetensors.sha256`` (``sha256sum`` format) and
``metadata.json`` into the output folder. Any failure exits 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILE = "model.safetensors"
PROGRAM = "tinygpt"

# tinygpt's default model, trained four times as long as the default run (val/loss about 0.48
# instead of 1.46), pinned to CPU, without intermediate checkpoints: under a minute on two idle
# cores (measured: 46 s), and the same params always give the same weights on one machine.
REFERENCE_PARAMS: dict[str, Any] = {
    "steps": 800,
    "batch_size": 16,
    "seq_len": 64,
    "d_model": 128,
    "n_layers": 4,
    "n_heads": 4,
    "lr": 3e-3,
    "warmup_steps": 20,
    "seed": 0,
    "eval_every": 100,
    "checkpoint_every": 0,
    "device": "cpu",
    "precision": "fp32",
}

# The evaluation re-runs the training's own procedure on the same bytes; anything beyond float
# noise from a different summation order means the file is not the model that was trained.
VAL_LOSS_TOLERANCE = 1e-6
TRAINING_TIMEOUT_SECONDS = 1800


class BuildError(Exception):
    """A step of the build failed; the message is the one line printed."""


@dataclass(frozen=True)
class Training:
    model: Path
    final_val_loss: float
    seconds: float
    log_tail: list[str]


@dataclass(frozen=True)
class Verification:
    val_loss: float
    metadata: dict[str, str]
    tensors: int
    parameters: int


def _drain(fd: int, chunks: list[bytes]) -> None:
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)


def _program_env(run_dir: Path, params_file: Path, events_fd: int, threads: int) -> dict[str, str]:
    # The same minimal environment a supervisor gives a program: nothing of the caller's
    # configuration leaks into the run.
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TZ") if name in os.environ}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "CONTROLPLANE_RUN_ID": "reference",
            "CONTROLPLANE_RUN_DIR": str(run_dir),
            "CONTROLPLANE_PARAMS": str(params_file),
            "CONTROLPLANE_EVENTS_FD": str(events_fd),
            "CONTROLPLANE_NUM_THREADS": str(threads),
        }
    )
    return env


def _last_val_loss(events: bytes) -> float:
    value: float | None = None
    for line in events.decode("utf-8").splitlines():
        event = json.loads(line)
        if event.get("type") == "metric" and event["values"].get("val/loss") is not None:
            value = float(event["values"]["val/loss"])
    if value is None:
        raise BuildError("training reported no val/loss")
    return value


def train(params: dict[str, Any], run_dir: Path, threads: int) -> Training:
    """Run the tinygpt program on ``params`` in ``run_dir``; return its model and final val/loss."""
    run_dir.mkdir(parents=True, exist_ok=True)
    params_file = run_dir.parent / f"{run_dir.name}-params.json"
    params_file.write_text(json.dumps(params, sort_keys=True))
    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(read_fd, chunks), daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        process = subprocess.run(
            [sys.executable, "-m", f"workers.programs.{PROGRAM}"],
            cwd=run_dir,
            env=_program_env(run_dir, params_file, write_fd, threads),
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TRAINING_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"training did not finish within {TRAINING_TIMEOUT_SECONDS} s") from None
    finally:
        os.close(write_fd)
        reader.join(timeout=30)
        os.close(read_fd)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        last = (process.stderr.strip().splitlines() or ["(no output on stderr)"])[-1]
        raise BuildError(f"training exited with code {process.returncode}: {last}")
    model = run_dir / MODEL_FILE
    if not model.is_file():
        raise BuildError(f"training finished without writing {MODEL_FILE}")
    return Training(
        model=model,
        final_val_loss=_last_val_loss(b"".join(chunks)),
        seconds=seconds,
        log_tail=process.stdout.strip().splitlines()[-3:],
    )


@contextlib.contextmanager
def _like_the_program(threads: int) -> Iterator[None]:
    """Run torch in this process as the program ran: same thread count, deterministic kernels.

    The evaluation must sum in the order the training process did to reproduce its val/loss;
    the previous settings come back afterwards (the tests call this inside pytest).
    """
    import torch

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def verify(model: Path, params: dict[str, Any], expected_val_loss: float, threads: int) -> Verification:
    """Load ``model``, check it against ``params`` and re-evaluate it; raise BuildError if anything is off."""
    # torch is imported here only: argument errors and the checks before training stay fast.
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from workers.programs.tinygpt.evaluate import MODEL_FORMAT, evaluate_safetensors
    from workers.programs.tinygpt.schema import resolve_params

    try:
        with safe_open(str(model), framework="pt") as handle:
            metadata: dict[str, str] = dict(handle.metadata() or {})
        tensors = load_file(str(model), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BuildError(f"{model.name} does not load: {' '.join(str(exc).split())}") from exc
    if metadata.get("format") != MODEL_FORMAT:
        raise BuildError(f"{model.name} is not a {MODEL_FORMAT} model (format={metadata.get('format')!r})")
    if json.loads(metadata.get("config", "{}")) != resolve_params(params):
        raise BuildError(f"{model.name} metadata names other params than the ones trained")
    if metadata.get("step") != str(params["steps"]):
        raise BuildError(f"{model.name} was saved at step {metadata.get('step')}, not {params['steps']}")
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise BuildError(f"{model.name}: tensor {name} holds non-finite values")
    recorded = float(metadata.get("final_val_loss", "nan"))
    if not math.isclose(recorded, expected_val_loss, rel_tol=0, abs_tol=VAL_LOSS_TOLERANCE):
        raise BuildError(
            f"{model.name} records final_val_loss {recorded!r} but training reported {expected_val_loss!r}"
        )
    try:
        with _like_the_program(threads):
            evaluated = evaluate_safetensors(model)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise BuildError(f"{model.name} cannot be evaluated: {' '.join(str(exc).split())}") from exc
    if not math.isclose(evaluated, expected_val_loss, rel_tol=0, abs_tol=VAL_LOSS_TOLERANCE):
        raise BuildError(
            f"evaluating {model.name} gives val/loss {evaluated!r}, training ended at {expected_val_loss!r}"
        )
    return Verification(
        val_loss=evaluated,
        metadata=metadata,
        tensors=len(tensors),
        parameters=sum(tensor.numel() for tensor in tensors.values()),
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str:
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_metadata(
    params: dict[str, Any], training: Training, verification: Verification, sha256: str, size: int
) -> dict[str, Any]:
    import torch

    recorded = verification.metadata
    return {
        "program": PROGRAM,
        "file": MODEL_FILE,
        "sha256": sha256,
        "size": size,
        "params": json.loads(recorded["config"]),
        "step": int(recorded["step"]),
        "final_train_loss": float(recorded["final_train_loss"]),
        "final_val_loss": training.final_val_loss,
        "evaluated_val_loss": verification.val_loss,
        "tensors": verification.tensors,
        "parameters": verification.parameters,
        "dataset_sha256": recorded["dataset_sha256"],
        "code_version": recorded["code_version"],
        "git_commit": _git_commit(),
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train_seconds": round(training.seconds, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def build(out: Path, params: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train, verify and write the reference model into ``out``; return its metadata."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reference-model-") as scratch:
        training = train(params, Path(scratch) / "run", threads)
        verification = verify(training.model, params, training.final_val_loss, threads)
        sha256 = sha256_of(training.model)
        size = training.model.stat().st_size
        metadata = build_metadata(params, training, verification, sha256, size)
        # Written last and only once verified, so a folder never holds an unverified model.
        shutil.copyfile(training.model, out / MODEL_FILE)
    if sha256_of(out / MODEL_FILE) != sha256:
        raise BuildError(f"{out / MODEL_FILE} changed while being copied")
    (out / f"{MODEL_FILE}.sha256").write_text(f"{sha256}  {MODEL_FILE}\n")
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "test-output" / "reference-model")
    parser.add_argument(
        "--steps", type=_positive_int, default=None, help="override the reference steps (tests only)"
    )
    parser.add_argument("--threads", type=_positive_int, default=min(2, os.cpu_count() or 1))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = dict(REFERENCE_PARAMS)
    if args.steps is not None:
        params["steps"] = args.steps
        params["warmup_steps"] = min(params["warmup_steps"], args.steps)
    # Verification imports the program from this checkout, the code the training process ran.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        metadata = build(args.out, params, args.threads)
    except (BuildError, OSError) as exc:
        sys.stderr.write(f"reference model: {' '.join(str(exc).split())}\n")
        return 1
    sys.stdout.write(
        f"reference model: {args.out / MODEL_FILE} sha256 {metadata['sha256']} "
        f"val/loss {metadata['evaluated_val_loss']:.6f} ({metadata['parameters']:,} parameters, "
        f"trained in {metadata['train_seconds']} s)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
