"""runs/archives.py against hostile archives: what the server refuses and how the worker unpacks."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from runs.archives import ArchiveError, Limits, extract_archive, inspect_archive

LIMITS = Limits(max_bytes=1024**2, max_unpacked_bytes=1024**2, max_files=50)


def archive(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=fmt) as tar,
    ):
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file(name: str, data: bytes = b"x = 1\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_a_plain_archive_is_listed_with_sizes_and_hashes() -> None:
    manifest = inspect_archive(
        archive(file("train.py", b"print(1)\n"), file("./lib//util.py", b"y\n")), LIMITS
    )
    assert manifest.files == [
        {"path": "lib/util.py", "size": 2, "sha256": hashlib.sha256(b"y\n").hexdigest()},
        {"path": "train.py", "size": 9, "sha256": hashlib.sha256(b"print(1)\n").hexdigest()},
    ]
    assert manifest.unpacked_size == 11


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([file("/etc/passwd")], "absolute path"),
        ([file("../escape.py")], "outside the directory"),
        ([file("a/../../escape.py")], "outside the directory"),
        ([file("bad\nname.py")], "control character"),
        ([special("link", tarfile.SYMTYPE, "/etc/passwd")], "links and devices are refused"),
        ([special("link", tarfile.SYMTYPE, "inside.py")], "links and devices are refused"),
        ([file("a.py"), special("hard", tarfile.LNKTYPE, "a.py")], "links and devices are refused"),
        ([special("dev", tarfile.CHRTYPE)], "links and devices are refused"),
        ([special("fifo", tarfile.FIFOTYPE)], "links and devices are refused"),
        ([file("a.py"), file("a.py", b"again")], "appears twice"),
        ([file("a"), file("a/b.py")], "appears twice, or as a file and a directory"),
        ([file("a/b.py"), file("a")], "appears twice, or as a file and a directory"),
        ([file("x" * 300)], "name part over 255 bytes"),
        ([], "holds no files"),
    ],
)
def test_hostile_members_are_refused(
    members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    with pytest.raises(ArchiveError, match=message):
        inspect_archive(archive(*members), LIMITS)


def test_a_nul_byte_in_a_pax_path_is_refused() -> None:
    info, data = file("innocent.py")
    info.pax_headers = {"path": "evil\x00.py"}
    with pytest.raises(ArchiveError):
        inspect_archive(archive((info, data)), LIMITS)


def test_a_zip_bomb_stops_at_the_unpacked_limit() -> None:
    bomb = archive(file("zeros.bin", b"\0" * (8 * 1024**2)))
    assert len(bomb) < 64 * 1024  # tiny compressed, 8 MiB unpacked
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        inspect_archive(bomb, LIMITS)


def test_a_huge_pax_header_stops_at_the_budget_not_in_memory() -> None:
    info, data = file("a.py")
    info.pax_headers = {"comment": "y" * (4 * 1024**2)}
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        inspect_archive(archive((info, data)), LIMITS)


def test_too_many_members_too_many_bytes_and_garbage_are_refused() -> None:
    many = archive(*(file(f"f{i}.py") for i in range(LIMITS.max_files + 1)))
    with pytest.raises(ArchiveError, match="more than 50 members"):
        inspect_archive(many, LIMITS)
    with pytest.raises(ArchiveError, match="the limit is"):
        inspect_archive(b"\0" * (LIMITS.max_bytes + 1), LIMITS)
    with pytest.raises(ArchiveError, match=r"not a valid tar\.gz"):
        inspect_archive(b"this is not gzip", LIMITS)
    with pytest.raises(ArchiveError, match=r"not a valid tar\.gz"):
        inspect_archive(archive(file("a.py", os.urandom(5000)))[:2000], LIMITS)  # truncated


def test_extract_writes_the_files_keeps_the_executable_bit_and_never_follows_a_planted_link(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.py").write_text("untouched")
    # What an earlier attempt's program might leave behind: links where the snapshot has paths.
    (run_dir / "train.py").symlink_to(outside / "target.py")
    (run_dir / "pkg").symlink_to(outside)
    data = archive(
        file("train.py", b"print('ok')\n"),
        file("pkg/mod.py", b"m = 1\n"),
        file("run.sh", b"#!/bin/sh\n", 0o755),
    )
    assert extract_archive(data, run_dir, LIMITS) == 3
    assert (run_dir / "train.py").read_text() == "print('ok')\n"
    assert not (run_dir / "train.py").is_symlink()
    assert not (run_dir / "pkg").is_symlink() and (run_dir / "pkg" / "mod.py").read_text() == "m = 1\n"
    assert (outside / "target.py").read_text() == "untouched"
    assert not (outside / "mod.py").exists()
    assert (run_dir / "run.sh").stat().st_mode & 0o111
    assert not (run_dir / "train.py").stat().st_mode & 0o111


def test_extract_checks_every_member_again(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="outside the directory"):
        extract_archive(archive(file("ok.py"), file("../../evil.py")), tmp_path, LIMITS)
    assert not (tmp_path.parent.parent / "evil.py").exists()
