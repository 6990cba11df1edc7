"""Read a .safetensors header without torch (the web process never imports it).

The format: 8 bytes little-endian header length, then that many bytes of JSON. The length is
capped before anything is read, so a hostile file cannot make us allocate gigabytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 16 * 1024 * 1024


class HeaderError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def parameters(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: list[TensorInfo]
    metadata: dict[str, str]

    @property
    def parameters(self) -> int:
        return sum(t.parameters for t in self.tensors)


def read_header(path: Path) -> SafetensorsHeader:
    with path.open("rb") as handle:
        return read_header_from(lambda start, length: handle.read(length))


def artifact_metadata(path: Path) -> dict[str, Any]:
    """What an artifact shows of a `.safetensors` file (its header's metadata and parameter count;
    a broken header is noted, not raised); nothing for other files."""
    if not path.name.endswith(".safetensors"):
        return {}
    try:
        header = read_header(path)
    except HeaderError as error:
        return {"header_error": str(error)}
    return {"safetensors": header.metadata, "parameters": header.parameters}


def read_header_from(read: Callable[[int, int], bytes]) -> SafetensorsHeader:
    """The header, reading only its bytes through `read(start, length)` (a file, a ranged GET)."""
    prefix = read(0, 8)
    if len(prefix) != 8:
        raise HeaderError("file is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise HeaderError(f"header of {length} bytes exceeds the {MAX_HEADER_BYTES}-byte cap")
    raw = read(8, length)
    if len(raw) != length:
        raise HeaderError("header is truncated")
    try:
        document: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HeaderError(f"header is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise HeaderError("header is not a JSON object")
    metadata = document.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict):
        raise HeaderError("__metadata__ is not an object")
    tensors: list[TensorInfo] = []
    for name, info in sorted(document.items()):
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise HeaderError(f"tensor {name!r} has no shape")
        tensors.append(
            TensorInfo(name=name, dtype=str(info.get("dtype")), shape=tuple(int(d) for d in info["shape"]))
        )
    return SafetensorsHeader(tensors=tensors, metadata={str(k): str(v) for k, v in metadata.items()})
