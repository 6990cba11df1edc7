"""Validation loss: the one procedure used both during training and afterwards.

``final_val_loss`` in a model file's metadata and :func:`evaluate_safetensors`
run exactly this code, so a model file can be re-checked independently of the
run that produced it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from .corpus import bytes_to_tensor, load_corpus
from .model import GPT, VOCAB_SIZE, ModelConfig, import_state_dict
from .schema import resolve_params

__all__ = ["EVAL_BATCH", "EVAL_TOKENS", "MODEL_FORMAT", "evaluate_safetensors", "validation_loss"]

MODEL_FORMAT = "tinygpt/1"

# Evaluating on a fixed prefix of the val split keeps periodic evals cheap
# (about as costly as a few training steps with the defaults) and comparable
# across runs with different seq_len.
EVAL_TOKENS = 16_384
EVAL_BATCH = 32


def _val_windows(val: bytes, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = bytes_to_tensor(val)
    n_windows = min(len(data) - 1, EVAL_TOKENS) // seq_len
    if n_windows < 1:
        raise ValueError(f"validation split ({len(data)} bytes) is shorter than seq_len {seq_len}")
    used = n_windows * seq_len
    inputs = data[:used].view(n_windows, seq_len)
    targets = data[1 : used + 1].view(n_windows, seq_len)
    return inputs, targets


@torch.no_grad()
def validation_loss(model: GPT, device: torch.device) -> float:
    """Mean next-byte cross-entropy (nats) over non-overlapping val windows, in fp32.

    Deterministic: fixed windows, fixed batch composition, no autocast, and
    the per-batch sums are accumulated in Python floats (float64).
    """
    inputs, targets = _val_windows(load_corpus().val, model.config.seq_len)
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for start in range(0, inputs.shape[0], EVAL_BATCH):
            x = inputs[start : start + EVAL_BATCH].to(device)
            y = targets[start : start + EVAL_BATCH].to(device)
            logits = model(x).float()
            loss = F.cross_entropy(logits.view(-1, VOCAB_SIZE), y.reshape(-1), reduction="sum")
            total += float(loss.item())
    finally:
        model.train(was_training)
    return total / targets.numel()


def evaluate_safetensors(path: Path) -> float:
    """Rebuild a model from a tinygpt ``model.safetensors`` and return its validation loss (CPU)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata: dict[str, str] = dict(handle.metadata() or {})
    if metadata.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a {MODEL_FORMAT} model (format={metadata.get('format')!r})")
    params = resolve_params(json.loads(metadata["config"]))
    # Constructing the model runs random init; keep that from disturbing the
    # caller's RNG stream since the weights are overwritten anyway.
    with torch.random.fork_rng(devices=[]):
        model = GPT(ModelConfig.from_params(params))
    import_state_dict(model, load_file(str(path), device="cpu"))
    return validation_loss(model, torch.device("cpu"))
