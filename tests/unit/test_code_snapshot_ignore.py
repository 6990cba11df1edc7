"""The client's snapshot packing: .gitignore/.cpignore rules, determinism and its limits.

The client is its own distribution (client/); these tests import it from the source tree.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "client"))

from controlplane_client.errors import ClientError
from controlplane_client.ignore import ignored, parse_rule
from controlplane_client.snapshot import Limits, pack

ROOMY = Limits(max_bytes=10 * 1024**2, max_unpacked_bytes=10 * 1024**2, max_files=1000)


def is_ignored(lines: list[str], path: str, is_dir: bool = False) -> bool:
    rules = [rule for line in lines if (rule := parse_rule(line)) is not None]
    return bool(ignored(path, is_dir, rules))


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "expected"),
    [
        ("*.pyc", "a.pyc", False, True),
        ("*.pyc", "deep/down/a.pyc", False, True),  # no slash: any depth
        ("*.pyc", "a.py", False, False),
        ("*.py?", "x.pyc", False, True),
        ("*", "anything/at/all.txt", False, True),
        ("/build", "build", True, True),  # leading slash: anchored at the file's directory
        ("/build", "src/build", True, False),
        ("build/", "build", True, True),  # trailing slash: directories only
        ("build/", "build", False, False),
        ("build/", "src/build", True, True),
        ("doc/*.txt", "doc/a.txt", False, True),  # a slash inside: anchored
        ("doc/*.txt", "x/doc/a.txt", False, False),
        ("doc/*.txt", "doc/sub/a.txt", False, False),  # * stays in one segment
        ("**/logs", "logs", True, True),
        ("**/logs", "a/b/logs", True, True),
        ("data/**", "data/x/y.bin", False, True),
        ("data/**", "data", True, False),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("a/**/b", "c/a/x/b", False, False),
        ("[abc].txt", "b.txt", False, True),
        ("[!abc].txt", "b.txt", False, False),
        ("[!abc].txt", "d.txt", False, True),
        ("\\#notes", "#notes", False, True),
        ("\\!important", "!important", False, True),
        ("# a comment", "# a comment", False, False),
        ("", "anything", False, False),
    ],
)
def test_a_gitignore_pattern_matches_what_git_would(
    pattern: str, path: str, is_dir: bool, expected: bool
) -> None:
    assert is_ignored([pattern], path, is_dir) is expected


def test_negation_reincludes_and_the_last_matching_rule_wins() -> None:
    rules = ["*.log", "!keep.log"]
    assert is_ignored(rules, "debug.log")
    assert not is_ignored(rules, "keep.log")
    assert is_ignored([*rules, "keep.log"], "keep.log")


def test_dot_git_is_always_left_out() -> None:
    assert is_ignored([], ".git", True)
    assert is_ignored(["!.git"], "sub/.git", True)


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names_in(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return sorted(member.name for member in archive.getmembers())


def test_pack_honours_gitignore_cpignore_nested_rules_and_skips_dot_git(tmp_path: Path) -> None:
    project = tree(
        tmp_path / "p",
        {
            "train.py": "print('hi')\n",
            ".gitignore": "*.ckpt\n/out/\n__pycache__/\n",
            ".cpignore": "data/\n!best.ckpt\n",
            "best.ckpt": "re-included by .cpignore",
            "old.ckpt": "ignored",
            "out/result.txt": "ignored (anchored dir)",
            "src/out/kept.txt": "kept: /out/ is anchored at the root",
            "src/__pycache__/x.pyc": "ignored",
            "src/.gitignore": "local_*.txt\n",
            "src/local_notes.txt": "ignored by the nested file",
            "src/model.py": "x = 1\n",
            "data/big.bin": "ignored by .cpignore",
            ".git/HEAD": "ref: refs/heads/main\n",
        },
    )
    packed = pack(project, ROOMY)
    assert packed.files == [
        ".cpignore",
        ".gitignore",
        "best.ckpt",
        "src/.gitignore",
        "src/model.py",
        "src/out/kept.txt",
        "train.py",
    ]
    assert names_in(packed.data) == packed.files
    assert packed.sha256 == hashlib.sha256(packed.data).hexdigest()


def test_the_same_directory_packs_to_the_same_bytes_and_a_change_changes_the_hash(tmp_path: Path) -> None:
    project = tree(tmp_path / "p", {"train.py": "print(1)\n", "lib/util.py": "y = 2\n"})
    first = pack(project, ROOMY)
    os.utime(project / "train.py", (1, 1))  # times are not part of a snapshot
    assert pack(project, ROOMY).sha256 == first.sha256
    (project / "train.py").write_text("print(2)\n")
    assert pack(project, ROOMY).sha256 != first.sha256


def test_pack_refuses_a_missing_directory_and_one_over_the_limits(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="no such directory"):
        pack(tmp_path / "nope", ROOMY)
    project = tree(tmp_path / "p", {"a.bin": "x" * 5000, "b.bin": "y" * 5000})
    with pytest.raises(
        ClientError, match=r"over the server's snapshot limit; list what to leave out in \.cpignore"
    ):
        pack(project, Limits(max_bytes=10**6, max_unpacked_bytes=8000, max_files=100))
    with pytest.raises(ClientError, match="files"):
        pack(project, Limits(max_bytes=10**6, max_unpacked_bytes=10**6, max_files=1))
    with pytest.raises(ClientError, match="compressed, over the server's limit"):
        pack(project, Limits(max_bytes=50, max_unpacked_bytes=10**6, max_files=100))


def test_a_link_inside_is_packed_as_its_file_and_one_outside_is_refused(tmp_path: Path) -> None:
    project = tree(tmp_path / "p", {"real.py": "z = 3\n"})
    (project / "alias.py").symlink_to("real.py")
    packed = pack(project, ROOMY)
    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as archive:
        alias = archive.getmember("alias.py")
        assert alias.isreg()
        assert archive.extractfile(alias).read() == b"z = 3\n"  # type: ignore[union-attr]
    (tmp_path / "secret.txt").write_text("outside")
    (project / "escape.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ClientError, match="links outside the directory"):
        pack(project, ROOMY)
