"""The database against the newest external anchor of each sink (`audit.anchors`).

The anchor vouches for checkpoints 1..C (each signs its predecessor, `audit.checkpoints`) and for
records 1..N ending in hash H. So the database must still hold checkpoint C exactly as anchored,
record N with hash H, and N records up to it. This catches what the checkpoints in the database
cannot: all or the newest checkpoints deleted (then the chain rewritten or its tail cut), because
the anchor still names what was there. An anchor is trusted only when its HMAC verifies with a
configured audit key, so an edited anchor line is itself reported.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from audit.anchors import (
    Anchor,
    AnchorSink,
    AnchorUnavailable,
    AnchorUnreadable,
    anchor_of,
    configured_sinks,
    signed_message,
)
from audit.keys import key_by_id
from audit.models import AuditCheckpoint, AuditRecord


@dataclass(frozen=True)
class AnchorCheck:
    ok: bool
    sinks_checked: int = 0
    checkpoint_id: int = 0  # the newest anchored checkpoint (0: none anchored)
    anchored_up_to: int = 0  # records 1..N are vouched for outside the database
    problem: str = ""
    first_broken_id: int | None = None
    unanchored: bool = False  # only "no anchor yet" is wrong: the next checkpoint pass anchors


@dataclass(frozen=True)
class _SinkResult:
    anchor: Anchor | None
    problem: str = ""
    first_broken_id: int | None = None
    unavailable: str = ""


def _signature_problem(anchor: Anchor) -> str:
    key = key_by_id(anchor.key_id)
    if key is None:
        return f"signed with key {anchor.key_id}, which is not configured (CONTROLPLANE_AUDIT_KEY)"
    expected = hmac.new(key.secret, signed_message(anchor), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, anchor.signature):
        return "its signature does not verify (the anchor was edited or forged)"
    return ""


def _records_problem(anchor: Anchor, last_id: int) -> tuple[str, int | None]:
    head_hash = AuditRecord.objects.filter(pk=anchor.head_id).values_list("hash", flat=True).first()
    if head_hash is None and anchor.head_id > last_id:
        return (
            f"it vouches for records up to {anchor.head_id}, but the chain ends at {last_id} (truncated)",
            last_id + 1,
        )
    if head_hash is None:
        return f"record {anchor.head_id}, its head, is missing (deleted)", anchor.head_id
    if head_hash != anchor.head_hash:
        return f"record {anchor.head_id}'s hash differs from the anchored one (the chain was rewritten)", None
    present = AuditRecord.objects.filter(pk__lte=anchor.head_id).count()
    if present != anchor.record_count:
        return (
            f"it vouches for {anchor.record_count} records up to {anchor.head_id}, {present} are left",
            None,
        )
    return "", None


def _check_sink(sink: AnchorSink, checkpoints: int, last_id: int) -> _SinkResult:
    try:
        anchor = sink.newest()
    except AnchorUnreadable as error:
        return _SinkResult(None, f"anchor {error}")
    except AnchorUnavailable as error:
        return _SinkResult(None, unavailable=str(error))
    if anchor is None:
        return _SinkResult(None)
    where = f"anchor of checkpoint {anchor.checkpoint_id} in {sink.name}"
    problem = _signature_problem(anchor)
    if problem:
        return _SinkResult(anchor, f"{where}: {problem}")
    problems = []
    stored = AuditCheckpoint.objects.filter(pk=anchor.checkpoint_id).first()
    if stored is None:
        problems.append(
            f"the database has {checkpoints} signed checkpoints, "
            f"checkpoint {anchor.checkpoint_id} is missing (deleted)"
        )
    elif anchor_of(stored) != anchor:
        problems.append(f"checkpoint {stored.pk} in the database differs from it (edited)")
    # Checked even when the checkpoint is gone: what the anchor vouches for says what else went.
    records_problem, first_broken = _records_problem(anchor, last_id)
    if records_problem:
        problems.append(records_problem)
    return _SinkResult(anchor, f"{where}: {'; '.join(problems)}" if problems else "", first_broken)


def check_anchors() -> AnchorCheck:
    """Every configured sink's newest anchor against the database; the first problem found."""
    checkpoints = AuditCheckpoint.objects.count()
    last_id = AuditRecord.objects.order_by("-id").values_list("pk", flat=True).first() or 0
    sinks = configured_sinks()
    results = [_check_sink(sink, checkpoints, last_id) for sink in sinks]
    anchored = [result.anchor for result in results if result.anchor is not None]
    newest = max(anchored, key=lambda anchor: anchor.checkpoint_id, default=None)

    def outcome(
        problem: str = "", first_broken_id: int | None = None, unanchored: bool = False
    ) -> AnchorCheck:
        return AnchorCheck(
            ok=not problem,
            sinks_checked=len(sinks),
            checkpoint_id=newest.checkpoint_id if newest is not None else 0,
            anchored_up_to=newest.head_id if newest is not None else 0,
            problem=problem,
            first_broken_id=first_broken_id,
            unanchored=unanchored,
        )

    broken = next((result for result in results if result.problem), None)
    if broken is not None:
        return outcome(broken.problem, broken.first_broken_id)
    unavailable = [result.unavailable for result in results if result.unavailable]
    missing = [
        sink.name
        for sink, result in zip(sinks, results, strict=True)
        if result.anchor is None and not result.unavailable
    ]
    if checkpoints and (missing or unavailable):
        # Not evidence of tampering: the file was removed or its storage is away, or this is the
        # first run since anchors exist. The next checkpoint pass anchors the newest checkpoint.
        said = [f"{', '.join(missing)} holds no anchor"] if missing else []
        return outcome(
            "; ".join(unavailable + said) + f", but the database has {checkpoints} signed checkpoints "
            "(the anchor was removed or cannot be reached, or none was written yet: run manage.py "
            "checkpoint_audit)",
            unanchored=True,
        )
    return outcome()
