"""Where tinygpt computes: the device, the autocast dtype and the CPU threads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .schema import ConfigError

ENV_NUM_THREADS = "CONTROLPLANE_NUM_THREADS"


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None


def pick_runtime(params: Mapping[str, Any]) -> Runtime:
    wanted = params["device"]
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but CUDA is not available on this machine")
    use_cuda = wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    dtype = torch.bfloat16 if params["precision"] == "bf16" else None
    return Runtime(device=device, autocast_dtype=dtype)


def configure_threads() -> None:
    value = os.environ.get(ENV_NUM_THREADS, "").strip()
    if not value:
        return
    try:
        threads = int(value)
    except ValueError:
        raise ConfigError(f"{ENV_NUM_THREADS} must be a positive integer, got {value!r}") from None
    if threads < 1:
        raise ConfigError(f"{ENV_NUM_THREADS} must be a positive integer, got {value!r}")
    torch.set_num_threads(threads)
