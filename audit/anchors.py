"""External anchors: a copy of every signed checkpoint kept where the database cannot rewrite it.

A checkpoint in the database proves nothing once it is gone: whoever can rewrite the audit table
can also delete the checkpoints (all of them, or the newest few) and leave a chain that agrees
with itself. So each checkpoint is also appended to every sink named by `CONTROLPLANE_AUDIT_ANCHORS`
(`audit.checkpoints`), and verification compares the database with the newest anchor of each sink
(`audit.anchor_check`). An anchor carries the checkpoint's fields and its HMAC, so an edited
anchor fails its own signature check, and a deleted checkpoint or record is named by the anchor
that still vouches for it.

Sinks: `file:///path` (JSON lines, one per checkpoint, appended with O_APPEND and fsync'd, mode
0600), the default `<data dir>/audit-anchors.jsonl`. Object storage can be another `AnchorSink`.
The structured log line `audit_checkpoint_written` is always written as well (write-only, so it is
evidence for a person, not an input to verification).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from django.conf import settings

if TYPE_CHECKING:
    from audit.models import AuditCheckpoint

ANCHOR_FORMAT = "controlplane-audit-anchor-v1"
FILE_NAME = "audit-anchors.jsonl"
_TAIL_BYTES = 8192  # an anchor line is about 500 bytes; the reader doubles this until it finds one


class AnchorUnreadable(Exception):
    """A sink holds something that is not an anchor: an edited or damaged line."""


class AnchorUnavailable(Exception):
    """A sink cannot be reached or read (a missing mount, permissions): no evidence either way."""


@dataclass(frozen=True)
class Anchor:
    """The signed fields of one checkpoint, exactly as they were signed."""

    checkpoint_id: int
    created_at: str  # the checkpoint's created_at.isoformat(), the text the HMAC covers
    head_id: int
    head_hash: str
    record_count: int
    key_id: str
    prev_signature: str
    signature: str

    def to_line(self) -> str:
        return json.dumps({"format": ANCHOR_FORMAT, **asdict(self)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> Anchor:
        try:
            body = json.loads(line)
        except ValueError as error:
            raise AnchorUnreadable(f"not JSON ({error})") from None
        if not isinstance(body, dict) or body.get("format") != ANCHOR_FORMAT:
            raise AnchorUnreadable(f"not a {ANCHOR_FORMAT} line")
        values: dict[str, int | str] = {}
        for field in fields(cls):
            value = body.get(field.name)
            wanted = int if field.type in ("int", int) else str
            if type(value) is not wanted:
                raise AnchorUnreadable(f"field {field.name!r} is missing or not {wanted.__name__}")
            values[field.name] = value
        return cls(**values)  # type: ignore[arg-type]


def signed_message(anchor: Anchor) -> bytes:
    """What a checkpoint's HMAC covers; the format name stays that of the checkpoint (v1)."""
    parts = [
        "controlplane-audit-checkpoint-v1",
        str(anchor.checkpoint_id),
        anchor.created_at,
        str(anchor.head_id),
        anchor.head_hash,
        str(anchor.record_count),
        anchor.key_id,
        anchor.prev_signature,
    ]
    return "|".join(parts).encode()


def anchor_of(checkpoint: AuditCheckpoint) -> Anchor:
    return Anchor(
        checkpoint_id=checkpoint.pk,
        created_at=checkpoint.created_at.isoformat(),
        head_id=checkpoint.head_id,
        head_hash=checkpoint.head_hash,
        record_count=checkpoint.record_count,
        key_id=checkpoint.key_id,
        prev_signature=checkpoint.prev_signature,
        signature=checkpoint.signature,
    )


class AnchorSink(Protocol):
    """Somewhere outside the database that keeps anchors: appends only, and says which is newest."""

    @property
    def name(self) -> str: ...

    def append(self, anchor: Anchor) -> None:
        """Store durably before returning; raise OSError (or any exception) when it could not."""

    def newest(self) -> Anchor | None:
        """The newest anchor, None when the sink holds none yet; AnchorUnreadable when damaged,
        AnchorUnavailable when it cannot be read."""


class FileSink:
    """An append-only JSON-lines file. Put it on storage the database's users cannot write (or
    make it append-only with `chattr +a`) and back it up with, not inside, the database backups."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def name(self) -> str:
        return f"file://{self.path}"

    def append(self, anchor: Anchor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every write lands at the end whatever other writers did, never over a line.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            data = (anchor.to_line() + "\n").encode()
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a crash cut the last line short: start a line of our own
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)

    def newest(self) -> Anchor | None:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise AnchorUnavailable(f"{self.name} cannot be read ({error.strerror})") from None
        with handle:
            size = handle.seek(0, os.SEEK_END)
            chunk = _TAIL_BYTES
            while True:
                start = max(0, size - chunk)
                handle.seek(start)
                lines = handle.read(size - start).split(b"\n")
                if start > 0:
                    lines = lines[1:]  # the first piece may be the end of a longer line
                # A last line without its newline is a write a crash cut short: not an anchor yet.
                complete = [line for line in lines[:-1] if line.strip()]
                if complete:
                    return _parse(self.name, complete[-1])
                if start == 0:
                    return None
                chunk *= 2


def _parse(sink: str, line: bytes) -> Anchor:
    try:
        return Anchor.from_line(line.decode())
    except UnicodeDecodeError:
        raise AnchorUnreadable(f"{sink}: its last line is not text (edited or damaged)") from None
    except AnchorUnreadable as error:
        raise AnchorUnreadable(
            f"{sink}: its last line is not an anchor: {error} (edited or damaged)"
        ) from None


def sink_for(url: str) -> AnchorSink:
    if url.startswith("file:///"):
        return FileSink(Path(url.removeprefix("file://")))
    raise ValueError(f"CONTROLPLANE_AUDIT_ANCHORS: {url!r} is not a file:///absolute/path")


def configured_sinks() -> list[AnchorSink]:
    """Read at each use, so a settings override applies (tests point it at a temporary file)."""
    return [sink_for(url) for url in settings.AUDIT_ANCHORS]
