"""Parameter schema of the tinygpt program.

The web process imports this module to render forms and validate requests, so
it must stay free of torch (and of anything else slow to import).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["DESCRIPTION", "PARAMS", "ConfigError", "resolve_params"]

DESCRIPTION = (
    "Byte-level decoder-only transformer (GPT-style: learned positions, pre-LayerNorm, tied "
    "embeddings) trained with AdamW and a warmup+cosine schedule on a procedurally generated "
    "English-like corpus that ships with the program (no downloads). Writes resumable checkpoints "
    "and a model.safetensors with its config and losses in the metadata."
)

# JSON-Schema property definitions.  Bounds are about safety (memory, runaway
# jobs), not about what trains well.
PARAMS: dict[str, dict[str, Any]] = {
    "steps": {
        "type": "integer",
        "default": 200,
        "minimum": 1,
        "maximum": 10_000_000,
        "description": "Number of optimizer steps to train for.",
    },
    "batch_size": {
        "type": "integer",
        "default": 16,
        "minimum": 1,
        "maximum": 4096,
        "description": "Sequences per optimizer step.",
    },
    "seq_len": {
        "type": "integer",
        "default": 64,
        "minimum": 8,
        "maximum": 2048,
        "description": "Context length in bytes; also the size of the position embedding table.",
    },
    "d_model": {
        "type": "integer",
        "default": 128,
        "minimum": 8,
        "maximum": 4096,
        "description": "Width of the residual stream. Must be divisible by n_heads.",
    },
    "n_layers": {
        "type": "integer",
        "default": 4,
        "minimum": 1,
        "maximum": 96,
        "description": "Number of transformer blocks.",
    },
    "n_heads": {
        "type": "integer",
        "default": 4,
        "minimum": 1,
        "maximum": 128,
        "description": "Attention heads per block; d_model must be divisible by it.",
    },
    "lr": {
        "type": "number",
        "default": 3e-3,
        "exclusiveMinimum": 0,
        "maximum": 1.0,
        "description": "Peak learning rate reached at the end of warmup.",
    },
    "warmup_steps": {
        "type": "integer",
        "default": 20,
        "minimum": 0,
        "maximum": 10_000_000,
        "description": "Steps of linear warmup before the cosine decay (to 10% of lr).",
    },
    "weight_decay": {
        "type": "number",
        "default": 0.1,
        "minimum": 0,
        "maximum": 1.0,
        "description": "AdamW weight decay, applied to matrices only (not biases, norms).",
    },
    "grad_clip": {
        "type": "number",
        "default": 1.0,
        "minimum": 0,
        "maximum": 1000.0,
        "description": "Clip the global gradient norm to this value; 0 disables clipping.",
    },
    "seed": {
        "type": "integer",
        "default": 0,
        "minimum": 0,
        # Kept below 2**53 so that browsers' JSON numbers carry it exactly.
        "maximum": 2**31 - 1,
        "description": "Seed for init and batch order; on CPU the same seed gives byte-identical weights.",
    },
    "eval_every": {
        "type": "integer",
        "default": 50,
        "minimum": 0,
        "maximum": 10_000_000,
        "description": "Compute val/loss every this many steps (0: only at the end).",
    },
    "checkpoint_every": {
        "type": "integer",
        "default": 100,
        "minimum": 0,
        "maximum": 10_000_000,
        "description": "Write a resumable checkpoint every this many steps (0: never).",
    },
    "device": {
        "type": "string",
        "default": "auto",
        "enum": ["auto", "cpu", "cuda"],
        "description": "Where to train: auto picks cuda when available, else cpu.",
    },
    "precision": {
        "type": "string",
        "default": "fp32",
        "enum": ["fp32", "bf16"],
        "description": "fp32, or bf16 autocast (weights and optimizer state stay fp32).",
    },
    "dataset_url": {
        "type": "string",
        "default": "",
        "maxLength": 2000,
        "description": "An http(s) URL of a UTF-8 text corpus (a presigned object-store URL works); "
        "empty: the built-in generated corpus. The worker fetches and validates it before training.",
    },
    "dataset_sha256": {
        "type": "string",
        "default": "",
        "maxLength": 64,
        "description": "Expected sha256 of the dataset at dataset_url; the run fails if it differs.",
    },
}


class ConfigError(ValueError):
    """The parameters cannot be used; the message is meant for the user."""


def _check_value(name: str, spec: Mapping[str, Any], value: Any) -> Any:
    kind = spec["type"]
    # bool is an int subclass in Python but not a number in JSON Schema.
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value!r}")
    elif kind == "string":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        if len(value) > spec.get("maxLength", 10_000):
            raise ConfigError(f"{name} must be at most {spec.get('maxLength', 10_000)} characters")
    else:  # pragma: no cover - guards against a typo in PARAMS
        raise AssertionError(f"unknown schema type {kind!r} for {name}")

    if "enum" in spec and value not in spec["enum"]:
        choices = ", ".join(repr(choice) for choice in spec["enum"])
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
    if "minimum" in spec and value < spec["minimum"]:
        raise ConfigError(f"{name} must be >= {spec['minimum']}, got {value!r}")
    if "exclusiveMinimum" in spec and value <= spec["exclusiveMinimum"]:
        raise ConfigError(f"{name} must be > {spec['exclusiveMinimum']}, got {value!r}")
    if "maximum" in spec and value > spec["maximum"]:
        raise ConfigError(f"{name} must be <= {spec['maximum']}, got {value!r}")
    return value


def resolve_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in defaults and check every value against :data:`PARAMS`.

    Unknown names are rejected rather than ignored: a misspelt parameter that
    silently falls back to its default wastes a whole training run.  Checks
    that need torch (is CUDA there?) are left to the program.
    """
    unknown = sorted(set(raw) - set(PARAMS))
    if unknown:
        raise ConfigError(f"unknown parameter(s): {', '.join(unknown)}")
    resolved: dict[str, Any] = {}
    for name, spec in PARAMS.items():
        resolved[name] = _check_value(name, spec, raw.get(name, spec["default"]))
    for message in cross_field_errors(resolved).values():
        raise ConfigError(message)
    return resolved


def cross_field_errors(params: Mapping[str, Any]) -> dict[str, str]:
    """Rules between params, by the param to blame; the control plane checks them at launch too."""
    errors: dict[str, str] = {}
    if params["d_model"] % params["n_heads"] != 0:
        errors["n_heads"] = (
            f"d_model ({params['d_model']}) must be divisible by n_heads ({params['n_heads']})"
        )
    return errors
