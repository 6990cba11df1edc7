"""Code snapshots: upload (checked, then registered whole), lookup, and what a code run launches.

A snapshot is keyed by the sha256 of its tar.gz archive: a client asks whether the key exists
before it sends anything, so an unchanged directory is uploaded once. `do_upload_snapshot`
verifies the hash and every member (runs/archives.py) before one INSERT registers it, so a
failed or interrupted upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from audit import chain
from runs.archives import ArchiveError, Limits, inspect_archive
from runs.models import CodeSnapshot
from runs.programs import Program

log = structlog.get_logger(__name__)

SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The program name of every code run: the program registry reserves it, so no program has it.
CODE_PROGRAM = "code"
MAX_COMMAND_ITEMS = 256
MAX_COMMAND_ITEM = 4096


class SnapshotError(Exception):
    """A refused upload: the field it concerns, why, and the HTTP status to answer."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


def limits() -> Limits:
    configured = settings.CODE_SNAPSHOT
    return Limits(configured["MAX_BYTES"], configured["MAX_UNPACKED_BYTES"], configured["MAX_FILES"])


def find_snapshot(sha256: str) -> CodeSnapshot | None:
    """The snapshot's metadata (its archive bytes deferred), or None."""
    if not SHA256.match(sha256):
        return None
    return CodeSnapshot.objects.defer("archive").filter(pk=sha256).first()


def check_upload_size(declared: int | None) -> None:
    """Refuse an upload from its Content-Length before a byte of it is read."""
    limit = limits().max_bytes
    if declared is not None and declared > limit:
        setting = "CONTROLPLANE_CODE_SNAPSHOT_MAX_BYTES"
        raise SnapshotError("archive", f"is {declared} bytes; the limit is {limit} ({setting})", 413)


def do_upload_snapshot(user: User, sha256: str, data: bytes) -> tuple[CodeSnapshot, bool]:
    """Register the archive under its sha256; (snapshot, created). Audited when created."""
    if not SHA256.match(sha256):
        raise SnapshotError("sha256", "must be 64 lowercase hexadecimal digits")
    check_upload_size(len(data))
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise SnapshotError("sha256", f"does not match the archive sent (its sha256 is {actual})")
    existing = find_snapshot(sha256)
    if existing is not None:
        return existing, False
    try:
        manifest = inspect_archive(data, limits())
    except ArchiveError as error:
        raise SnapshotError("archive", str(error)) from None
    with transaction.atomic():
        # Two uploads of the same bytes at once: one row, the second finds it.
        snapshot, created = CodeSnapshot.objects.get_or_create(
            sha256=sha256,
            defaults={
                "size": len(data),
                "unpacked_size": manifest.unpacked_size,
                "files": manifest.files,
                "archive": data,
                "created_by": user,
            },
        )
        if created:
            details = {"sha256": sha256, "size": len(data), "files": len(manifest.files)}
            chain.record("snapshot.upload", actor=user, target=snapshot, details=details)
    log.info("snapshot_uploaded", sha256=sha256, size=len(data), created=created)
    return snapshot, created


@dataclass(frozen=True)
class CodeLaunch:
    snapshot: str
    command: tuple[str, ...]

    @property
    def program(self) -> Program:
        return code_program(self.command)


def code_program(command: Sequence[str]) -> Program:
    """What a code run executes, as a Program: its own command, in its run directory."""
    return Program(
        name=CODE_PROGRAM, command=tuple(command), description="an uploaded code snapshot", params={}
    )


def _check_command(command: Any) -> str | None:
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        return 'a non-empty list of strings is required, e.g. ["python", "train.py"]'
    if len(command) > MAX_COMMAND_ITEMS:
        return f"at most {MAX_COMMAND_ITEMS} items"
    if any(len(c) > MAX_COMMAND_ITEM or "\x00" in c for c in command):
        return f"each item must be at most {MAX_COMMAND_ITEM} characters, without NUL"
    if not command[0].strip():
        return "the program to run (the first item) is empty"
    return None


def check_code(code: Any, program: Any, params: Any, errors: dict[str, str]) -> CodeLaunch | None:
    """Validate the `code` part of a launch body; problems go into `errors`, keyed by field."""
    if program not in (None, "", CODE_PROGRAM):
        errors["program"] = "a code run names no program: its command says what runs"
    if params not in (None, {}):
        errors["params"] = "a code run takes no params: pass arguments in its command"
    if not isinstance(code, dict):
        errors["code"] = 'must be an object: {"snapshot": "<sha256>", "command": [...]}'
        return None
    unknown = sorted(set(code) - {"snapshot", "command"})
    if unknown:
        errors[f"code.{unknown[0][:40]}"] = "unknown field"
    snapshot = code.get("snapshot")
    if not isinstance(snapshot, str) or not SHA256.match(snapshot):
        errors["code.snapshot"] = "must be the sha256 of an uploaded snapshot (64 lowercase hex digits)"
    elif not CodeSnapshot.objects.filter(pk=snapshot).exists():
        errors["code.snapshot"] = f"no snapshot {snapshot[:12]}…; upload it first (PUT /api/v1/snapshots/)"
    if (problem := _check_command(code.get("command"))) is not None:
        errors["code.command"] = problem
    if any(key == "code" or key.startswith("code.") for key in errors) or "program" in errors:
        return None
    return CodeLaunch(snapshot=str(snapshot), command=tuple(code["command"]))
