"""Code snapshot archives (tar.gz): checked as an attacker would send them, and unpacked safely.

Pure Python (no Django): the web checks an upload with `inspect_archive` before it registers the
snapshot, and the worker unpacks it with `extract_archive`, which checks every member again.

What is refused: more compressed bytes, unpacked bytes or members than the limits (the gzip
stream is read through a counter, so a zip bomb stops at the limit, pax headers included);
absolute paths, `..`, empty or over-long names, NUL and control characters; any member other
than a regular file or a directory (symlinks, hard links, devices, FIFOs); the same path twice,
or a path both a file and a directory. Modes are not kept beyond the executable bit.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MAX_NAME = 1024
MAX_PART = 255
CHUNK = 1024 * 1024
# Headers (512 bytes each, pax records) on top of the file bytes the limit counts.
HEADER_ALLOWANCE = 4096


class ArchiveError(ValueError):
    """The archive is refused; the message says why in one line."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_unpacked_bytes: int
    max_files: int


@dataclass(frozen=True)
class Manifest:
    files: list[dict[str, Any]]  # {"path", "size", "sha256"}, sorted by path
    unpacked_size: int


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Counted(io.RawIOBase):
    """The decompressed stream, refusing to yield more than `budget` bytes."""

    def __init__(self, source: _Readable, budget: int) -> None:
        self.source, self.budget, self.seen = source, budget, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        self.seen += len(data)
        if self.seen > self.budget:
            raise ArchiveError(f"the archive unpacks to more than {self.budget} bytes")
        buffer[: len(data)] = data
        return len(data)


def check_name(raw: str) -> str:
    """The member's path, normalised ("./a//b" → "a/b"), or ArchiveError."""
    if not raw or len(raw) > MAX_NAME:
        raise ArchiveError(f"a member name is empty or longer than {MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ArchiveError(f"member {raw[:80]!r} has a control character (NUL, newline, ...) in its name")
    if raw.startswith("/"):
        raise ArchiveError(f"member {raw[:80]!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {raw[:80]!r} points outside the directory (..)")
    if not parts:
        return ""
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_PART for p in parts):
        raise ArchiveError(f"member {raw[:80]!r} has a name part over {MAX_PART} bytes")
    return "/".join(parts)


def _members(data: bytes, limits: Limits) -> Iterator[tuple[str, tarfile.TarInfo, tarfile.TarFile]]:
    """Each checked member (its normalised path, its header and the open archive), in order."""
    if len(data) > limits.max_bytes:
        raise ArchiveError(f"the archive is {len(data)} bytes; the limit is {limits.max_bytes}")
    budget = limits.max_unpacked_bytes + HEADER_ALLOWANCE * (limits.max_files + 4)
    stream = io.BufferedReader(_Counted(gzip.GzipFile(fileobj=io.BytesIO(data)), budget), CHUNK)
    count, unpacked = 0, 0
    files: set[str] = set()
    directories: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                count += 1
                if count > limits.max_files:
                    raise ArchiveError(f"the archive has more than {limits.max_files} members")
                path = check_name(member.name)
                if not (member.isreg() or member.isdir()):
                    kind = "links and devices are refused"
                    raise ArchiveError(f"member {path[:80]!r} is not a regular file or directory ({kind})")
                if not path:
                    continue  # "." itself
                unpacked += member.size if member.isreg() else 0
                if unpacked > limits.max_unpacked_bytes:
                    raise ArchiveError(f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes")
                parents = {"/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)}
                if path in files or (member.isreg() and path in directories) or parents & files:
                    raise ArchiveError(f"member {path[:80]!r} appears twice, or as a file and a directory")
                (files if member.isreg() else directories).add(path)
                directories.update(parents)
                yield path, member, archive
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, UnicodeError) as error:
        raise ArchiveError(f"not a valid tar.gz archive: {error}") from None


def _copy(archive: tarfile.TarFile, member: tarfile.TarInfo, sink: Callable[[bytes], object]) -> str:
    reader = archive.extractfile(member)
    assert reader is not None  # a regular file
    digest = hashlib.sha256()
    while chunk := reader.read(CHUNK):
        digest.update(chunk)
        sink(chunk)
    return digest.hexdigest()


def inspect_archive(data: bytes, limits: Limits) -> Manifest:
    """Check every member and hash every file; ArchiveError names the first problem."""
    files: list[dict[str, Any]] = []
    total = 0
    for path, member, archive in _members(data, limits):
        if member.isreg():
            files.append({"path": path, "size": member.size, "sha256": _copy(archive, member, len)})
            total += member.size
    if not files:
        raise ArchiveError("the archive holds no files")
    return Manifest(sorted(files, key=lambda f: f["path"]), total)


def _directory_for(root: Path, relative: str) -> Path:
    """`root/relative` as a real directory: a link or file an earlier attempt's program left in
    the way is removed, so writing never follows a link out of the run directory."""
    current = root
    for part in relative.split("/") if relative else []:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
        current.mkdir(exist_ok=True)
    return current


def extract_archive(data: bytes, directory: Path, limits: Limits) -> int:
    """Unpack into `directory` (which exists), replacing files of the same paths; returns the
    number of files written."""
    root = directory.resolve()
    written = 0
    for path, member, archive in _members(data, limits):
        if member.isdir():
            _directory_for(root, path)
            continue
        parent, _, name = path.rpartition("/")
        target = _directory_for(root, parent) / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        mode = 0o755 if member.mode & 0o111 else 0o644
        # O_EXCL | O_NOFOLLOW: the path was just cleared; anything that appeared since is refused.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as handle:
            _copy(archive, member, handle.write)
        written += 1
    return written
