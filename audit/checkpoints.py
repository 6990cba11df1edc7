"""Signed checkpoints of the audit chain head.

The hash chain alone proves that the records agree with each other, not that they are the records
the application wrote: someone with write access to the table can rewrite it whole, recomputing
every hash, or cut its tail off. A checkpoint is an HMAC-SHA256, with a key kept outside the
database (`audit.keys`), over "records 1..N end in hash H", written periodically (beat, or
`manage.py checkpoint_audit`) and only after the chain verified. Verification then requires, for
every checkpoint: a valid signature, a link to the previous checkpoint, and record N still
carrying hash H. Records appended since the newest checkpoint are covered by the chain only,
until the next one.

Checkpoints in the database can be deleted with the records, so each one is also appended to the
external anchor sinks (`audit.anchors`) once it has committed. A pass also anchors the newest
checkpoint wherever a sink lacks it (a sink that failed last time, a first run after upgrading),
so a failed append heals at the next pass instead of leaving a false alarm behind.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field

import structlog
from django.db import connection, transaction
from django.utils import timezone

from audit.anchor_check import AnchorCheck, check_anchors
from audit.anchors import anchor_of, configured_sinks, signed_message
from audit.chain import GENESIS, ChainWalk, walk_records
from audit.keys import SigningKey, current_key, key_by_id
from audit.models import AuditCheckpoint, AuditRecord

log = structlog.get_logger(__name__)

_LOCK_KEY = 0x0A0D18  # serializes checkpoint writers (the chain's own lock is 0x0A0D17)


def sign(checkpoint: AuditCheckpoint, key: SigningKey) -> str:
    return hmac.new(key.secret, signed_message(anchor_of(checkpoint)), hashlib.sha256).hexdigest()


def signature_valid(checkpoint: AuditCheckpoint) -> bool | None:
    """True or False; None when no configured key has the checkpoint's key id."""
    key = key_by_id(checkpoint.key_id)
    if key is None:
        return None
    return hmac.compare_digest(sign(checkpoint, key), checkpoint.signature)


@dataclass(frozen=True)
class CheckpointCheck:
    ok: bool
    checked: int
    covered_up_to: int = 0
    broken_id: int | None = None
    problem: str = ""
    first_broken_id: int | None = None  # the first record the broken checkpoint no longer vouches for


def _problem(
    checkpoint: AuditCheckpoint,
    expected_pk: int,
    previous_signature: str,
    stored_hash: str | None,
    last_id: int,
    vouched: int,
) -> tuple[str, int | None] | None:
    """What is wrong with one checkpoint, and the first record it no longer vouches for; None if fine."""
    if checkpoint.pk != expected_pk:
        return f"checkpoint {expected_pk} is missing (deleted)", None
    if checkpoint.prev_signature != previous_signature:
        return "its link to the previous checkpoint does not match", None
    valid = signature_valid(checkpoint)
    if valid is None:
        return f"signed with key {checkpoint.key_id}, which is not configured (CONTROLPLANE_AUDIT_KEY)", None
    if not valid:
        return "its signature does not verify (forged or edited)", None
    if stored_hash is None and checkpoint.head_id > last_id:
        return (
            f"it vouches for records up to {checkpoint.head_id}, but the chain ends at {last_id} (truncated)",
            last_id + 1,
        )
    if stored_hash is None:
        return f"record {checkpoint.head_id}, its head, is missing (deleted)", checkpoint.head_id
    if stored_hash != checkpoint.head_hash:
        return (
            f"record {checkpoint.head_id}'s hash differs from the signed one: "
            f"records {vouched + 1}-{checkpoint.head_id} were rewritten",
            vouched + 1,
        )
    return None


def check_checkpoints() -> CheckpointCheck:
    """Every checkpoint in order: present, linked, signed by a known key, and matching its record."""
    checkpoints = list(AuditCheckpoint.objects.order_by("id"))
    heads = dict(
        AuditRecord.objects.filter(pk__in={c.head_id for c in checkpoints}).values_list("pk", "hash")
    )
    last_id = AuditRecord.objects.order_by("-id").values_list("pk", flat=True).first() or 0
    previous_signature = GENESIS
    vouched = 0  # records up to here matched a checkpoint already
    for index, checkpoint in enumerate(checkpoints):
        found = _problem(
            checkpoint, index + 1, previous_signature, heads.get(checkpoint.head_id), last_id, vouched
        )
        if found is not None:
            problem, first_record = found
            return CheckpointCheck(
                False, index, vouched, checkpoint.pk, f"checkpoint {checkpoint.pk}: {problem}", first_record
            )
        previous_signature = checkpoint.signature
        vouched = checkpoint.head_id
    return CheckpointCheck(True, len(checkpoints), vouched)


@dataclass(frozen=True)
class CheckpointOutcome:
    walk: ChainWalk
    checks: CheckpointCheck
    checkpoint: AuditCheckpoint | None
    note: str
    anchors: AnchorCheck = field(default_factory=lambda: AnchorCheck(ok=True))
    anchor_failures: tuple[str, ...] = ()  # sinks that could not take the newest checkpoint
    anchored_at: float | None = None  # every record that existed at this Unix time is anchored

    @property
    def ok(self) -> bool:
        # "No anchor yet" is healed by this very pass; a failed append is not a broken chain.
        return self.walk.ok and self.checks.ok and (self.anchors.ok or self.anchors.unanchored)

    @property
    def problem(self) -> str:
        return self.walk.reason or self.checks.problem or self.anchors.problem

    @property
    def first_broken_id(self) -> int | None:
        return self.walk.first_broken_id or self.checks.first_broken_id or self.anchors.first_broken_id

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": self.walk.checked,
            "checkpoint_id": self.checkpoint.pk if self.checkpoint is not None else None,
            "head_id": self.walk.head_id,
            "note": self.note,
            "anchor_failures": list(self.anchor_failures),
        }


def anchor_newest() -> tuple[AuditCheckpoint | None, tuple[str, ...]]:
    """Append the newest checkpoint to every sink whose newest anchor is older; the sinks that failed."""
    newest = AuditCheckpoint.objects.order_by("-id").first()
    if newest is None:
        return None, ()
    failed = []
    for sink in configured_sinks():
        try:
            held = sink.newest()
            if held is None or held.checkpoint_id < newest.pk:
                sink.append(anchor_of(newest))
        except Exception as error:  # a full disk or a missing mount must not stop the next sink
            failed.append(sink.name)
            log.error(
                "audit_anchor_failed",
                sink=sink.name,
                checkpoint_id=newest.pk,
                error=repr(error)[:300],
                error_kind="storage",
                error_code="audit_anchor_failed",
            )
    return newest, tuple(failed)


def _sign_head(walk: ChainWalk) -> tuple[AuditCheckpoint | None, str]:
    """Write a checkpoint of the verified head unless one already covers it."""
    key = current_key()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        last = AuditCheckpoint.objects.order_by("-id").first()
        if last is not None and last.head_id >= walk.head_id:
            return None, f"records up to {last.head_id} are already signed"
        checkpoint = AuditCheckpoint(
            pk=(last.pk + 1) if last is not None else 1,
            created_at=timezone.now(),
            head_id=walk.head_id,
            head_hash=walk.head_hash,
            record_count=walk.checked,
            key_id=key.key_id,
            prev_signature=last.signature if last is not None else GENESIS,
        )
        checkpoint.signature = sign(checkpoint, key)
        checkpoint.save(force_insert=True)
    # Logged too, so a copy of each checkpoint lives in the log pipeline (evidence for a person).
    log.info(
        "audit_checkpoint_written",
        checkpoint_id=checkpoint.pk,
        head_id=checkpoint.head_id,
        head_hash=checkpoint.head_hash,
        record_count=checkpoint.record_count,
        created_at=checkpoint.created_at.isoformat(),
        key_id=checkpoint.key_id,
        prev_signature=checkpoint.prev_signature,
        signature=checkpoint.signature,
    )
    return checkpoint, f"signed records 1-{checkpoint.head_id}"


def do_write_checkpoint() -> CheckpointOutcome:
    """Verify the chain (records, checkpoints, anchors), sign its head, then anchor it outside the
    database; a broken chain is never signed (that would bless it).

    The walk runs without the append lock (appends go on meanwhile); it reads one snapshot, and the
    checkpoint vouches for exactly the records the walk verified. The anchors are appended after
    the checkpoint committed: an anchor of a checkpoint that then rolled back would be a false alarm.
    """
    started = time.time()
    walk = walk_records()
    checks = check_checkpoints()
    anchors = check_anchors()
    outcome = CheckpointOutcome(walk, checks, None, "", anchors)
    if not outcome.ok:
        log.error(
            "audit_checkpoint_refused",
            first_broken_id=outcome.first_broken_id,
            reason=outcome.problem,
            error_kind="integrity",
            error_code="audit_chain_broken",
        )
        return CheckpointOutcome(walk, checks, None, "the chain is broken; nothing was signed", anchors)
    checkpoint, note = (
        (None, "the chain is empty; nothing to sign") if walk.head_id == 0 else _sign_head(walk)
    )
    newest, failed = anchor_newest()
    # Everything the walk saw is anchored when the newest checkpoint covers the walked head and
    # every sink took it; records appended since `started` wait for the next pass.
    covered = newest is None or newest.head_id >= walk.head_id
    anchored_at = started if covered and not failed else None
    return CheckpointOutcome(walk, checks, checkpoint, note, anchors, failed, anchored_at)
