"""The tinygpt model: a byte-level, decoder-only transformer in plain torch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPT", "VOCAB_SIZE", "ModelConfig", "export_state_dict", "import_state_dict"]

VOCAB_SIZE = 256  # raw bytes: no tokenizer to ship or version

# The output head shares the token embedding's weight; it is stored once.
TIED_KEY = "head.weight"
TIED_SOURCE = "tok_emb.weight"


@dataclass(frozen=True)
class ModelConfig:
    seq_len: int
    d_model: int
    n_layers: int
    n_heads: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ModelConfig:
        return cls(
            seq_len=int(params["seq_len"]),
            d_model=int(params["d_model"]),
            n_layers=int(params["n_layers"]),
            n_heads=int(params["n_heads"]),
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        shape = (batch, time, self.n_heads, width // self.n_heads)
        q = q.view(shape).transpose(1, 2)
        k = k.view(shape).transpose(1, 2)
        v = v.view(shape).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        merged = attended.transpose(1, 2).contiguous().view(batch, time, width)
        out: Tensor = self.proj(merged)
        return out


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.proj = nn.Linear(4 * config.d_model, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(F.gelu(self.fc(x)))
        return out


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        out: Tensor = x + self.mlp(self.ln2(x))
        return out


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE, bias=False)
        self.head.weight = self.tok_emb.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 style: small normal init, and residual output projections scaled
        # down with depth so the residual stream does not grow with n_layers.
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(".proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        """Logits of shape (batch, time, VOCAB_SIZE) for int64 byte ids (batch, time)."""
        time = idx.shape[1]
        if time > self.config.seq_len:
            raise ValueError(f"sequence of length {time} exceeds seq_len {self.config.seq_len}")
        positions = torch.arange(time, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.head(self.ln_f(x))
        return logits


def export_state_dict(model: GPT) -> dict[str, Tensor]:
    """Weights for safetensors: tied weight stored once, contiguous CPU copies."""
    state = model.state_dict()
    return {
        name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in state.items()
        if name != TIED_KEY
    }


def import_state_dict(model: GPT, tensors: Mapping[str, Tensor]) -> None:
    """Load weights written by :func:`export_state_dict`; the tie is re-established by the model."""
    state = dict(tensors)
    state[TIED_KEY] = state[TIED_SOURCE]
    model.load_state_dict(state, strict=True)
