"""Training loop, checkpoints and the final model file of tinygpt.

Exit codes of :func:`main`: 0 success, 2 configuration error (one line on
stderr starting with ``config error:``), 3 dataset error (``data error:``);
SIGTERM ends the run at the next step boundary after a final checkpoint, by
SIGTERM; anything unexpected propagates as a traceback with exit code 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from workers import sdk

from . import distributed
from .corpus import DataError, bytes_to_tensor, load_corpus
from .evaluate import MODEL_FORMAT, validation_loss
from .model import GPT, VOCAB_SIZE, ModelConfig, export_state_dict
from .runtime import ENV_NUM_THREADS, Runtime, configure_threads, pick_runtime
from .schema import ConfigError, resolve_params
from .storage import atomic_write, save_safetensors_deterministic

__all__ = ["ENV_NUM_THREADS", "MODEL_FILE", "code_version", "main"]

MODEL_FILE = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "tinygpt-checkpoint/1"

# Parameters that may differ between a checkpoint and the run resuming from
# it without changing the trajectory of the weights.
_RESUME_MAY_CHANGE = frozenset({"eval_every", "checkpoint_every", "device"})

_MIN_LR_FRACTION = 0.1


def code_version() -> str:
    """sha256 over this package's source files (name and content, sorted by name)."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode("utf-8") + b"\0")
        digest.update(source.read_bytes() + b"\0")
    return digest.hexdigest()


def _say(line: str) -> None:
    # stdout is the run's log; flush so the supervisor sees lines as they happen.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _lr_factor(step_index: int, warmup: int, total: int) -> float:
    """Multiplier of the peak lr for the optimizer step with 0-based index ``step_index``."""
    if step_index < warmup:
        return (step_index + 1) / warmup
    progress = min(1.0, (step_index - warmup) / max(1, total - warmup))
    return _MIN_LR_FRACTION + (1 - _MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def _build_optimizer(model: GPT, params: Mapping[str, Any], device: torch.device) -> torch.optim.AdamW:
    # Decay matrices only: shrinking biases and LayerNorm gains towards zero
    # hurts more than it regularises.  parameters() yields the tied weight once.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": params["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params["lr"], betas=(0.9, 0.95), fused=device.type == "cuda")


def _sample_batch(
    data: Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
    chunk = data[starts[:, None] + torch.arange(seq_len + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def _checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_DIR}/step-{step}.pt"


class Trainer:
    def __init__(
        self,
        params: dict[str, Any],
        runtime: Runtime,
        run_dir: Path,
        reporter: sdk.Reporter,
        group: distributed.Group | None = None,
    ) -> None:
        self.params = params
        self.group = group or distributed.Group()
        self.runtime = runtime
        self.run_dir = run_dir
        self.reporter = reporter
        self.total_steps: int = params["steps"]
        self.step = 0
        self.last_train_loss = math.nan
        # Set by SIGTERM (a cancel or the soft time limit): stop at the next step boundary
        # after a final checkpoint, so a resumed attempt loses nothing.
        self.stop_requested = False

        corpus = load_corpus()
        if min(len(corpus.train), len(corpus.val)) <= params["seq_len"]:
            raise DataError(
                f"the dataset is too small for seq_len {params['seq_len']}: "
                f"{len(corpus.train)} training and {len(corpus.val)} validation bytes"
            )
        self.dataset_sha256 = corpus.sha256
        self.train_data = bytes_to_tensor(corpus.train)

        torch.manual_seed(params["seed"])
        random.seed(params["seed"])
        self.model = GPT(ModelConfig.from_params(params)).to(runtime.device)
        # What a step runs: the model itself, or DDP around it (which averages the gradients of
        # the ranks' shares; the model has no buffers to keep in sync).
        self.forward: torch.nn.Module = self.model
        if self.group.distributed:
            devices = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=devices)
        self.optimizer = _build_optimizer(self.model, params, runtime.device)
        warmup, total = params["warmup_steps"], self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda index: _lr_factor(index, warmup, total)
        )
        # Batches come from their own generator (on CPU, whatever the device)
        # so that the data order depends only on the seed and the step.
        self.batch_generator = torch.Generator(device="cpu")
        self.batch_generator.manual_seed(params["seed"])

    # -- checkpoints ------------------------------------------------------------

    def _checkpoint_state(self) -> dict[str, Any]:
        cuda_states = torch.cuda.get_rng_state_all() if self.runtime.device.type == "cuda" else []
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": dict(self.params),
            "last_train_loss": self.last_train_loss,
            "dataset_sha256": self.dataset_sha256,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch_cpu": torch.get_rng_state(),
                "torch_cuda": cuda_states,
                "batch_generator": self.batch_generator.get_state(),
                "python": random.getstate(),
            },
        }

    def save_checkpoint(self) -> None:
        if not self.group.is_main:
            return  # rank 0 writes the one checkpoint every rank restores
        self.reporter.status("saving")
        name = _checkpoint_name(self.step)
        state = self._checkpoint_state()

        def write(fh: IO[bytes]) -> None:
            torch.save(state, fh)

        atomic_write(self.run_dir / name, write)
        self.reporter.checkpoint(self.step, name)
        _say(f"checkpoint step {self.step} -> {name}")

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            # torch's messages run to a paragraph; the first sentence is the useful part.
            detail = str(exc).split(". ")[0][:200]
            raise ConfigError(f"cannot read checkpoint {path.name}: {type(exc).__name__}: {detail}") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path.name} is not a {CHECKPOINT_FORMAT} checkpoint")
        saved_config: dict[str, Any] = state["config"]
        changed = sorted(
            name
            for name in set(saved_config) | set(self.params)
            if name not in _RESUME_MAY_CHANGE and saved_config.get(name) != self.params.get(name)
        )
        if changed:
            raise ConfigError(f"checkpoint was written with different params: {', '.join(changed)}")
        if state["dataset_sha256"] != self.dataset_sha256:
            raise ConfigError("checkpoint was trained on a different dataset version")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch_cpu"])
        if self.runtime.device.type == "cuda" and rng["torch_cuda"]:
            torch.cuda.set_rng_state_all(rng["torch_cuda"])
        self.batch_generator.set_state(rng["batch_generator"])
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        self.step = int(state["step"])
        self.last_train_loss = float(state["last_train_loss"])

    # -- training ---------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.runtime.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.runtime.device.type, dtype=self.runtime.autocast_dtype)

    def _train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (loss, lr used)."""
        params = self.params
        x, y = _sample_batch(self.train_data, params["batch_size"], params["seq_len"], self.batch_generator)
        x, y = distributed.share(x, y, self.group)
        x = x.to(self.runtime.device, non_blocking=True)
        y = y.to(self.runtime.device, non_blocking=True)
        lr = float(self.scheduler.get_last_lr()[0])
        with self._autocast():
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float().view(-1, VOCAB_SIZE), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        # Same as loss.backward(), which torch leaves unannotated (mypy --strict rejects it).
        torch.autograd.backward(loss)
        if params["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), params["grad_clip"])
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.item()), lr

    def _evaluate(self) -> float:
        if not self.group.is_main:
            return math.nan  # the weights are the same on every rank: rank 0 evaluates them
        self.reporter.status("evaluating")
        val_loss = validation_loss(self.model, self.runtime.device)
        self.reporter.metric(self.step, {"val/loss": val_loss})
        return val_loss

    def run(self) -> None:
        params = self.params
        eval_every: int = params["eval_every"]
        checkpoint_every: int = params["checkpoint_every"]
        tokens_per_step = params["batch_size"] * params["seq_len"]
        first_step = self.step + 1

        self.reporter.status("training")
        loop_started = time.perf_counter()
        while self.step < self.total_steps:
            started = time.perf_counter()
            loss, lr = self._train_step()
            loss, self.stop_requested = distributed.agree(
                loss, self.stop_requested, self.group, self.runtime.device
            )
            elapsed = time.perf_counter() - started
            self.step += 1
            self.last_train_loss = loss
            self.reporter.metric(
                self.step,
                {
                    "train/loss": loss,
                    "lr": lr,
                    "tokens_per_s": tokens_per_step / elapsed,
                    "step_time_ms": elapsed * 1000.0,
                },
            )
            self.reporter.progress(self.step, self.total_steps)
            if eval_every and self.step % eval_every == 0 and self.step < self.total_steps:
                val_loss = self._evaluate()
                self._say(
                    f"step {self.step}/{self.total_steps} train_loss {loss:.4f} val_loss {val_loss:.4f} "
                    f"lr {lr:.3g} {tokens_per_step / elapsed:,.0f} tok/s"
                )
                self.reporter.status("training")
            if checkpoint_every and self.step % checkpoint_every == 0:
                self.save_checkpoint()
                self.reporter.status("training")
            elif self.stop_requested:
                self.save_checkpoint()
            if self.stop_requested:
                distributed.barrier(self.group)  # no rank leaves before rank 0's checkpoint is written
                self._say(f"stopping at step {self.step} (SIGTERM) after a final checkpoint")
                sys.stdout.flush()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
        loop_seconds = time.perf_counter() - loop_started
        steps_done = self.step - first_step + 1

        if not self.group.is_main:
            return
        # fp32 on the final weights: the same procedure evaluate_safetensors runs.
        final_val_loss = self._evaluate()
        self.save_model(final_val_loss)
        rate = steps_done / loop_seconds if steps_done > 0 and loop_seconds > 0 else 0.0
        _say(
            f"done: steps={self.step} trained_steps={steps_done} train_time_s={loop_seconds:.3f} "
            f"steps_per_s={rate:.3f} final_train_loss={self.last_train_loss:.4f} "
            f"final_val_loss={final_val_loss:.4f}"
        )

    def _say(self, line: str) -> None:
        if self.group.is_main:
            _say(line)

    def save_model(self, final_val_loss: float) -> None:
        self.reporter.status("saving")
        metadata = {
            "format": MODEL_FORMAT,
            "config": json.dumps(self.params, sort_keys=True, separators=(",", ":")),
            "step": str(self.step),
            "final_train_loss": repr(self.last_train_loss),
            "final_val_loss": repr(final_val_loss),
            "dataset_sha256": self.dataset_sha256,
            "code_version": code_version(),
        }
        save_safetensors_deterministic(self.run_dir / MODEL_FILE, export_state_dict(self.model), metadata)
        self.reporter.artifact(MODEL_FILE, "model")
        _say(f"saved {MODEL_FILE}")


def _data_error(message: str) -> int:
    sys.stderr.write(f"data error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return 3


def _config_error(message: str) -> int:
    one_line = " ".join(message.split())
    sys.stderr.write(f"config error: {one_line}\n")
    sys.stderr.flush()
    return 2


def main() -> int:
    try:
        try:
            raw_params = sdk.load_params()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read params file {os.environ.get(sdk.ENV_PARAMS)!r}: {exc}") from exc
        params = resolve_params(raw_params)
        resume = sdk.resume_from()
        configure_threads()
        runtime = pick_runtime(params)
        group = distributed.join(runtime.device.type, params["batch_size"])
        if group.distributed and runtime.device.type == "cuda":
            runtime = Runtime(torch.device("cuda", group.local_rank), runtime.autocast_dtype)
        # Rank 0 reports (sdk: RANK); every rank's stdout and stderr are the run's log.
        reporter = sdk.Reporter.from_env()
    except ValueError as exc:
        # ConfigError, ResumePathError and a malformed events fd all land here:
        # every one is a problem with the caller's input, not a crash.
        return _config_error(str(exc))

    run_dir = sdk.run_dir()
    with reporter:
        reporter.status("loading", device=f"{runtime.device} {params['precision']}")
        if runtime.device.type == "cpu":
            # Bitwise reproducibility is part of the contract on CPU; on CUDA it
            # would need CUBLAS_WORKSPACE_CONFIG and slower kernels.
            torch.use_deterministic_algorithms(True)
        try:
            trainer = Trainer(params, runtime, run_dir, reporter, group)
        except DataError as exc:
            return _data_error(str(exc))
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(trainer, "stop_requested", True))
        if resume is not None:
            try:
                trainer.load_checkpoint(resume)
            except ConfigError as exc:
                return _config_error(str(exc))
        _say(
            (f"[rank {group.rank}/{group.world_size}] " if group.distributed else "")
            + f"tinygpt: device={runtime.device.type} precision={params['precision']} "
            f"threads={torch.get_num_threads()} dataset_sha256={trainer.dataset_sha256[:12]} "
            + (f"resuming from step {trainer.step} " if resume is not None else "")
            + f"params={json.dumps(params, sort_keys=True)}"
        )
        trainer.run()
    distributed.leave(group)
    return 0
