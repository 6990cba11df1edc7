"""Code runs on the worker: unpack the run's snapshot into its run directory, and the command.

The snapshot comes from Postgres (web and worker hosts share no disk); its bytes are checked
against their sha256 and every member again (runs/archives.py) before anything is written.
Each attempt unpacks it again over the run directory, so a later attempt starts from the code
as uploaded, next to the checkpoints the earlier ones wrote.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from runs.archives import ArchiveError, extract_archive
from runs.attempts import Claim, Outcome, system_line
from runs.models import CodeSnapshot, ErrorKind, RunStatus
from runs.programs import Program
from runs.snapshots import code_program, limits

Say = Callable[[tuple[datetime, str, str]], None]
# The command's interpreter: the worker's own, which has torch and the SDK (no per-snapshot
# dependency installs yet: docs/client.md).
INTERPRETERS = ("python", "python3")


def program_for(claim: Claim) -> Program:
    """The code run's command as a Program, a leading `python` being the worker's interpreter."""
    command = list(claim.command)
    if command and command[0] in INTERPRETERS:
        command[0] = sys.executable
    return code_program(command)


def unpack_snapshot(claim: Claim, directory: Path, say: Say) -> Outcome | None:
    """Write the snapshot's files into `directory`; the Outcome that ends the attempt on failure."""
    archive = CodeSnapshot.objects.filter(pk=claim.snapshot).values_list("archive", flat=True).first()
    if archive is None:
        message = f"code snapshot {str(claim.snapshot)[:12]} is not registered"
        return Outcome(RunStatus.FAILED, None, ErrorKind.CONFIG, "snapshot_missing", message)
    data = bytes(archive)
    if hashlib.sha256(data).hexdigest() != claim.snapshot:
        message = f"code snapshot {str(claim.snapshot)[:12]} is damaged (sha256 mismatch)"
        # Not retried: every worker reads the same stored bytes.
        return Outcome(RunStatus.FAILED, None, ErrorKind.DATA, "snapshot_damaged", message)
    try:
        written = extract_archive(data, directory, limits())
    except ArchiveError as error:  # e.g. over limits lowered since the upload: the same everywhere
        message = f"code snapshot {str(claim.snapshot)[:12]} could not be unpacked: {error}"
        return Outcome(RunStatus.FAILED, None, ErrorKind.CONFIG, "snapshot_invalid", message)
    except OSError as error:  # this worker's disk (full, a directory in the way): another may do
        message = f"code snapshot {str(claim.snapshot)[:12]} could not be written: {error}"
        return Outcome(RunStatus.FAILED, None, ErrorKind.INFRASTRUCTURE, "snapshot_unwritable", message)
    say(system_line(f"code snapshot {str(claim.snapshot)[:12]} unpacked: {written} files, {len(data)} bytes"))
    return None
