"""Writing and verifying the audit chain.

Each record's hash covers its own fields and the previous record's hash, so editing, deleting,
reordering or truncating records behind the application's back breaks the chain at the first
record touched; `verify_chain` reports it. Appends are serialized (an advisory lock on Postgres;
SQLite serializes writers itself) so two concurrent records cannot both claim the same parent.

A rewrite of the whole chain (every hash recomputed) is consistent with itself; the signed
checkpoints of the chain head (`audit.checkpoints`) catch it, and a truncation of the tail below
the newest checkpoint. Checkpoints deleted along with the rewrite are caught by the external
anchors (`audit.anchor_check`). `verify_chain` checks all three.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.utils import timezone

from audit.anchor_check import check_anchors
from audit.context import current
from audit.models import AuditRecord
from redaction import redact_value

GENESIS = "0" * 64
_LOCK_KEY = 0x0A0D17  # the advisory lock that serializes appends


def _digest(record: AuditRecord) -> str:
    body = {
        "id": record.pk,
        "created_at": record.created_at.isoformat(),
        "actor_id": record.actor_id,
        "actor": record.actor,
        "actor_role": record.actor_role,
        "action": record.action,
        "target_type": record.target_type,
        "target_id": record.target_id,
        "outcome": record.outcome,
        "ip": record.ip,
        "user_agent": record.user_agent,
        "request_id": record.request_id,
        "details": record.details,
        "prev_hash": record.prev_hash,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _target_type(target: Any) -> str:
    if target is None:
        return ""
    # A model's name, also through a lazy proxy (`request.user` is a SimpleLazyObject).
    meta = getattr(target, "_meta", None)
    return str(getattr(meta, "model_name", "") or type(target).__name__.lower())


# Audit sits below accounts in the layer map (accounts records into it), so the role of an actor
# comes from a reader that accounts registers when it is ready (accounts.apps).
_role_reader: Callable[[Any], str | None] = lambda user: None  # noqa: E731


def register_role_reader(reader: Callable[[Any], str | None]) -> None:
    global _role_reader
    _role_reader = reader


def _role_label(user: Any) -> str:
    if user is None or not getattr(user, "is_authenticated", False):
        return "anonymous"
    role = _role_reader(user)
    return str(role) if role is not None else "deactivated"


def record(
    action: str,
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    target: Any = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append a record in the caller's transaction: it commits (or rolls back) with the change."""
    context = current()
    authenticated = actor is not None and actor.is_authenticated
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        last = AuditRecord.objects.order_by("-id").values_list("pk", "hash").first()
        entry = AuditRecord(
            pk=(last[0] + 1) if last else 1,
            created_at=timezone.now(),
            actor_id=actor.pk if authenticated and actor is not None else None,
            actor=actor.get_username() if authenticated and actor is not None else "",
            actor_role=_role_label(actor),
            action=action,
            target_type=_target_type(target),
            target_id=str(getattr(target, "pk", "")) if target is not None else "",
            outcome=outcome,
            ip=context.ip,
            user_agent=context.user_agent,
            request_id=context.request_id,
            # Secret values never reach the append-only table, where they could not be removed.
            details=redact_value(details or {}),
            prev_hash=last[1] if last else GENESIS,
        )
        entry.hash = _digest(entry)
        entry.save(force_insert=True)
    return entry


@dataclass(frozen=True)
class ChainWalk:
    """The records alone: the first broken one, and the last record of the intact prefix."""

    ok: bool
    checked: int
    head_id: int = 0
    head_hash: str = GENESIS
    first_broken_id: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str = ""
    checkpoints_checked: int = 0
    broken_checkpoint_id: int | None = None
    checkpoint_problem: str = ""
    covered_up_to: int = 0  # the newest signed checkpoint vouches for records 1..covered_up_to
    anchor_sinks_checked: int = 0
    anchored_checkpoint_id: int = 0  # the newest checkpoint found in an external anchor
    anchored_up_to: int = 0  # ... which vouches for records 1..anchored_up_to from outside the database
    anchor_problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_broken_id": self.first_broken_id,
            "reason": self.reason,
            "checkpoints_checked": self.checkpoints_checked,
            "broken_checkpoint_id": self.broken_checkpoint_id,
            "checkpoint_problem": self.checkpoint_problem,
            "covered_up_to": self.covered_up_to,
            "anchor_sinks_checked": self.anchor_sinks_checked,
            "anchored_checkpoint_id": self.anchored_checkpoint_id,
            "anchored_up_to": self.anchored_up_to,
            "anchor_problem": self.anchor_problem,
        }


def walk_records() -> ChainWalk:
    """Walk the chain in id order; the first record whose hash or link is wrong breaks it."""
    previous_hash = GENESIS
    expected_id = 1
    checked = 0
    for entry in AuditRecord.objects.order_by("id").iterator(chunk_size=2_000):
        problem = ""
        if entry.pk != expected_id:
            problem = f"record {expected_id} is missing (deleted or reordered)"
        elif entry.prev_hash != previous_hash:
            problem = "its link to the previous record does not match"
        elif _digest(entry) != entry.hash:
            problem = "its contents do not match its hash (edited)"
        if problem:
            return ChainWalk(False, checked, expected_id - 1, previous_hash, entry.pk, problem)
        previous_hash = entry.hash
        expected_id += 1
        checked += 1
    return ChainWalk(True, checked, expected_id - 1, previous_hash)


def verify_chain() -> Verification:
    """The records, the signed checkpoints against them, and the database against the newest
    external anchors; the first problem of each, and the earliest record any of them places."""
    from audit.checkpoints import check_checkpoints  # checkpoints build on this module

    walk = walk_records()
    checks = check_checkpoints()
    anchors = check_anchors()
    placed = [
        (broken, reason)
        for broken, reason in (
            (walk.first_broken_id, walk.reason),
            (checks.first_broken_id, checks.problem),
            (anchors.first_broken_id, anchors.problem),
        )
        if broken is not None
    ]
    first_broken_id, reason = min(placed, key=lambda pair: pair[0], default=(None, ""))
    return Verification(
        ok=walk.ok and checks.ok and anchors.ok,
        checked=walk.checked,
        first_broken_id=first_broken_id,
        reason=reason or checks.problem or anchors.problem,
        checkpoints_checked=checks.checked,
        broken_checkpoint_id=checks.broken_id,
        checkpoint_problem=checks.problem,
        covered_up_to=checks.covered_up_to,
        anchor_sinks_checked=anchors.sinks_checked,
        anchored_checkpoint_id=anchors.checkpoint_id,
        anchored_up_to=anchors.anchored_up_to,
        anchor_problem=anchors.problem,
    )
