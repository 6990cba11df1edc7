"""Pack a directory into a code snapshot: a deterministic tar.gz and its sha256.

Deterministic (sorted paths, zero times and owners, modes 0644 or 0755, a gzip header without a
time or name), so an unchanged directory packs to the same bytes and the server, which keys
snapshots by sha256, is not sent it again. Only regular files go in (empty directories do not);
a symlink inside the directory is stored as the file it points to, one pointing outside it (or
to a directory) is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from controlplane_client.errors import ClientError
from controlplane_client.ignore import Rule, ignored, read_rules


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_unpacked_bytes: int
    max_files: int


@dataclass(frozen=True)
class Packed:
    data: bytes
    sha256: str
    files: list[str]
    unpacked_size: int


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


def _source(root: Path, path: Path, relative: str) -> Path:
    """The file whose bytes go in for `path`: itself, or what a link inside `root` points to."""
    if not path.is_symlink():
        return path
    target = path.resolve()
    if root not in target.parents or not target.is_file():
        raise ClientError(f"{relative} links outside the directory or to a directory; not packed")
    return target


def collect(root: Path, limits: Limits) -> list[tuple[str, Path]]:
    """(relative path, file to read) of every file not ignored, sorted; refuses over the limits."""
    root = root.resolve()
    found: list[tuple[str, Path]] = []
    total = 0

    def visit(directory: Path, base: str, rules: list[Rule]) -> None:
        nonlocal total
        rules = rules + read_rules(directory, base)
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            relative = f"{base}/{entry.name}" if base else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if ignored(relative, is_dir, rules):
                continue
            if is_dir:
                visit(Path(entry.path), relative, rules)
                continue
            if not (entry.is_file() or entry.is_symlink()):
                continue  # sockets, FIFOs: nothing a program reads as code
            source = _source(root, Path(entry.path), relative)
            total += source.stat().st_size
            found.append((relative, source))
            if total > limits.max_unpacked_bytes or len(found) > limits.max_files:
                raise ClientError(
                    f"{root} holds more than {_mib(limits.max_unpacked_bytes)} or {limits.max_files} files "
                    "after .gitignore/.cpignore, over the server's snapshot limit; list what to leave "
                    "out in .cpignore"
                )

    visit(root, "", [])
    return sorted(found)


def pack(directory: Path | str, limits: Limits) -> Packed:
    """The snapshot of `directory`; a ClientError (one line) when it is missing or too large."""
    root = Path(directory)
    if not root.is_dir():
        raise ClientError(f"no such directory: {directory}")
    files = collect(root, limits)
    if not files:
        raise ClientError(f"{directory} has no files to snapshot (after .gitignore/.cpignore)")
    buffer = io.BytesIO()
    unpacked = 0
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for relative, source in files:
            info = tarfile.TarInfo(relative)
            stat = source.stat()
            info.size = stat.st_size
            info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
            with source.open("rb") as handle:
                archive.addfile(info, handle)
            unpacked += info.size
    data = buffer.getvalue()
    if len(data) > limits.max_bytes:
        raise ClientError(
            f"the snapshot of {directory} is {_mib(len(data))} compressed, over the server's limit of "
            f"{_mib(limits.max_bytes)}; list what to leave out in .cpignore"
        )
    return Packed(data, hashlib.sha256(data).hexdigest(), [r for r, _ in files], unpacked)
