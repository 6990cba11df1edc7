"""tinygpt under torchrun: one process per device, DistributedDataParallel, rank 0 reports.

Started by torchrun (WORLD_SIZE > 1), every process joins one process group (NCCL on CUDA, gloo
on CPU). The global batch stays `batch_size` sequences whatever the number of processes: every
rank draws the same batch from the same seeded generator and keeps its strided share
(DistributedSampler's split, `rank::world_size`), and DDP averages the gradients. The mean of
the shares' mean losses is the mean loss of the whole batch, so a run on N processes follows the
1-process run's trajectory up to floating-point rounding (docs/distributed.md says how closely), and
a checkpoint of either resumes the other.

Rank 0 writes checkpoints, evaluates, writes the model and reports; every rank restores the same
checkpoint on resume. A stop (SIGTERM) is agreed on at every step, so all ranks leave the loop
after the same step and none waits forever in a collective the others have left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .schema import ConfigError


@dataclass(frozen=True)
class Group:
    """This process' place in the run: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def join(device_type: str, batch_size: int) -> Group:
    """Join the run's process group when torchrun started this process (WORLD_SIZE > 1)."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Group()
    if batch_size % world_size:
        raise ConfigError(
            f"batch_size {batch_size} must be divisible by the number of processes ({world_size}): "
            "each process trains on an equal share of every batch"
        )
    group = Group(_env_int("RANK", 0), world_size, _env_int("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(group.local_rank)
    # torchrun's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE) says where the others are.
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return group


def leave(group: Group) -> None:
    if group.distributed and dist.is_initialized():
        dist.destroy_process_group()


def share(x: Tensor, y: Tensor, group: Group) -> tuple[Tensor, Tensor]:
    """This rank's strided share of a batch every rank drew alike."""
    if not group.distributed:
        return x, y
    return x[group.rank :: group.world_size], y[group.rank :: group.world_size]


def agree(loss: float, stop: bool, group: Group, device: torch.device) -> tuple[float, bool]:
    """The batch's mean loss (the mean of the equal shares' means) and whether any rank was asked
    to stop: one all-reduce per step, so every rank leaves the loop after the same step."""
    if not group.distributed:
        return loss, stop
    values = torch.tensor([loss, 1.0 if stop else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return float(values[0].item()) / group.world_size, bool(values[1].item() > 0)


def barrier(group: Group) -> None:
    if group.distributed:
        dist.barrier()
