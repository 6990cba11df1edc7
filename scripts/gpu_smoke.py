"""The CUDA smoke for a lent GPU machine: tinygpt in fp32 and bf16, and NCCL across the GPUs.

Usage: ``scripts/gpu_smoke.sh [--out FILE] [--steps N] [--gpus N]`` (this module, with the repo's venv)

1. **fp32** and **bf16**: the tinygpt program runs exactly as a supervisor runs it (a subprocess,
   params from a JSON file, events on a pipe: scripts/build_reference_model.py's harness) on
   `cuda`, the same seed and size; each must finish with a finite val/loss and a model file, and
   bf16's val/loss must be within BF16_TOLERANCE of fp32's (bf16 keeps 8 bits of mantissa: the
   same training lands close, not equal). Tokens per second are reported for both.
2. **NCCL**: torchrun starts one process per GPU (`--gpus`, default all) running
   scripts/allreduce_check.py: the all-reduce must be exact; algorithm and bus bandwidth reported.

Prints one JSON document (and writes it to `--out`). Exit 0 when every check passed, 1 when one
failed, 2 when there is no CUDA device (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from scripts.build_reference_model import REFERENCE_PARAMS, ROOT, BuildError, train

BF16_TOLERANCE = 0.15  # |val/loss(bf16) - val/loss(fp32)| after the same steps and seed


def _precision_run(precision: str, steps: int, work: Path) -> dict[str, Any]:
    params = {**REFERENCE_PARAMS, "steps": steps, "device": "cuda", "precision": precision, "batch_size": 64}
    try:
        training = train(params, work / precision, threads=4)
    except BuildError as error:
        return {"ok": False, "error": str(error)}
    tokens = steps * params["batch_size"] * params["seq_len"]
    return {
        "ok": math.isfinite(training.final_val_loss),
        "val_loss": round(training.final_val_loss, 6),
        "seconds": round(training.seconds, 2),
        "tokens_per_s": round(tokens / training.seconds),
    }


def _nccl_run(gpus: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        str(ROOT / "scripts" / "allreduce_check.py"),
        "--backend",
        "nccl",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        return {"ok": False, "error": f"torchrun exited {done.returncode}: {tail[:300]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return {"ok": bool(result["correct"]), **result}


def smoke(steps: int, gpus: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as scratch:
        report["fp32"] = _precision_run("fp32", steps, Path(scratch))
        report["bf16"] = _precision_run("bf16", steps, Path(scratch))
    if report["fp32"]["ok"] and report["bf16"]["ok"]:
        gap = abs(report["bf16"]["val_loss"] - report["fp32"]["val_loss"])
        report["bf16"]["gap_to_fp32"] = round(gap, 6)
        report["bf16"]["ok"] = gap <= BF16_TOLERANCE
    report["nccl"] = _nccl_run(gpus)
    report["ok"] = all(report[part]["ok"] for part in ("fp32", "bf16", "nccl"))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    parser.add_argument("--steps", type=int, default=300, help="tinygpt steps per precision (default 300)")
    parser.add_argument(
        "--gpus", type=int, default=0, help="processes for the NCCL check (default: all GPUs)"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        cuda = torch.version.cuda
        sys.stderr.write(f"gpu_smoke: no CUDA device (torch {torch.__version__}, CUDA build {cuda})\n")
        return 2
    report = smoke(args.steps, args.gpus or torch.cuda.device_count())
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
