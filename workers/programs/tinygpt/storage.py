"""Crash-safe file writes and byte-deterministic safetensors files."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from safetensors.torch import save_file
from torch import Tensor

__all__ = ["atomic_write", "save_safetensors_deterministic"]


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry itself is on disk.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temporary_sibling(final: Path) -> Iterator[Path]:
    # Same directory as the target, so os.replace is an atomic rename on one
    # filesystem; a leading dot keeps half-written files out of casual listings.
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(final: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``final`` so that readers see either the old file or the complete new one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_sibling(final) as tmp:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _canonicalise_header(fh: IO[bytes]) -> None:
    """Rewrite the safetensors JSON header with ``__metadata__`` keys sorted.

    safetensors serialises metadata from a Rust HashMap whose iteration order
    changes from process to process, so two identical saves differ in their
    header bytes.  Reordering keys never changes the header's length, which
    lets us patch it in place without touching the tensor data.
    """
    fh.seek(0)
    (length,) = struct.unpack("<Q", fh.read(8))
    header: dict[str, Any] = json.loads(fh.read(length))
    canonical: dict[str, Any] = {}
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        canonical["__metadata__"] = dict(sorted(metadata.items()))
    canonical.update(header)  # tensor entries keep safetensors' own (deterministic) order
    encoded = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(encoded) > length:
        raise RuntimeError("canonical safetensors header is longer than the original; refusing to patch")
    # safetensors pads its header with spaces for alignment; keep the same length.
    fh.seek(8)
    fh.write(encoded.ljust(length, b" "))


def save_safetensors_deterministic(
    final: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> None:
    """``safetensors.torch.save_file``, made byte-reproducible and atomic."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_sibling(final) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        # safetensors creates its file 0600; match what torch.save and other writers get.
        os.chmod(tmp, 0o644)
        with tmp.open("r+b") as fh:
            _canonicalise_header(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    _fsync_dir(final.parent)
