"""Signed checkpoints of the audit chain head.

The hash chain alone proves that the records agree with each other, not that they are the records
the application wrote: someone with write access to the table can rewrite it whole, recomputing
every hash, or cut its tail off. A checkpoint is an HMAC-SHA256, with a key kept outside the
database (`audit.keys`), over "records 1..N end in hash H", written periodically (beat, or
`manage.py checkpoint_audit`) and only after the chain verified. Verification then requires, for
every checkpoint: a valid signature, a link to the previous checkpoint, and record N still
carrying hash H. Records appended since the newest checkpoint are covered by the chain only,
until the next one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import structlog
from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS, ChainWalk, walk_records
from audit.keys import SigningKey, current_key, key_by_id
from audit.models import AuditCheckpoint, AuditRecord

log = structlog.get_logger(__name__)

_LOCK_KEY = 0x0A0D18  # serializes checkpoint writers (the chain's own lock is 0x0A0D17)
_FORMAT = "controlplane-audit-checkpoint-v1"


def _message(checkpoint: AuditCheckpoint) -> bytes:
    fields = [
        _FORMAT,
        str(checkpoint.pk),
        checkpoint.created_at.isoformat(),
        str(checkpoint.head_id),
        checkpoint.head_hash,
        str(checkpoint.record_count),
        checkpoint.key_id,
        checkpoint.prev_signature,
    ]
    return "|".join(fields).encode()


def sign(checkpoint: AuditCheckpoint, key: SigningKey) -> str:
    return hmac.new(key.secret, _message(checkpoint), hashlib.sha256).hexdigest()


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

    @property
    def ok(self) -> bool:
        return self.walk.ok and self.checks.ok

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": self.walk.checked,
            "checkpoint_id": self.checkpoint.pk if self.checkpoint is not None else None,
            "head_id": self.walk.head_id,
            "note": self.note,
        }


def do_write_checkpoint() -> CheckpointOutcome:
    """Verify the chain, then sign its head; a broken chain is never signed (that would bless it).

    The walk runs without the append lock (appends go on meanwhile); it reads one snapshot, and the
    checkpoint vouches for exactly the records the walk verified.
    """
    walk = walk_records()
    checks = check_checkpoints()
    if not (walk.ok and checks.ok):
        log.error(
            "audit_checkpoint_refused",
            first_broken_id=walk.first_broken_id or checks.first_broken_id,
            reason=walk.reason or checks.problem,
            error_kind="integrity",
            error_code="audit_chain_broken",
        )
        return CheckpointOutcome(walk, checks, None, "the chain is broken; nothing was signed")
    if walk.head_id == 0:
        return CheckpointOutcome(walk, checks, None, "the chain is empty; nothing to sign")
    key = current_key()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        last = AuditCheckpoint.objects.order_by("-id").first()
        if last is not None and last.head_id >= walk.head_id:
            return CheckpointOutcome(walk, checks, None, f"records up to {last.head_id} are already signed")
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
    # Logged too, so a copy of each checkpoint lives outside the database (the log pipeline).
    log.info(
        "audit_checkpoint_written",
        checkpoint_id=checkpoint.pk,
        head_id=checkpoint.head_id,
        head_hash=checkpoint.head_hash,
        key_id=checkpoint.key_id,
        signature=checkpoint.signature,
    )
    return CheckpointOutcome(walk, checks, checkpoint, f"signed records 1-{checkpoint.head_id}")
