"""Re-encrypting every secret with the newest key, one row at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from audit import chain as audit
from vault import crypto
from vault.models import Secret


@dataclass
class RotationReport:
    key_id: str
    rotated: int = 0
    current: int = 0
    failed: list[str] = field(default_factory=list)


def rotate_all() -> RotationReport:
    """Idempotent: a secret the newest key already opens is left as it is."""
    ring = crypto.keyring()
    report = RotationReport(key_id=ring.newest_id)
    for pk in Secret.objects.order_by("pk").values_list("pk", flat=True):
        # One short transaction per secret, with the row locked: an update racing the rotation
        # either lands before (and is rotated) or after (and is already under the newest key).
        with transaction.atomic():
            secret = Secret.objects.select_for_update().filter(pk=pk).first()
            if secret is None:
                continue
            if ring.is_current(secret.ciphertext):
                report.current += 1
                if secret.key_id != ring.newest_id:
                    Secret.objects.filter(pk=pk).update(key_id=ring.newest_id)
                continue
            try:
                ciphertext = ring.rotate(secret.ciphertext)
            except crypto.Undecryptable:
                report.failed.append(secret.name)
                continue
            Secret.objects.filter(pk=pk).update(ciphertext=ciphertext, key_id=ring.newest_id)
            report.rotated += 1
    if report.rotated or report.failed:
        audit.record(
            "secret.rotate",
            actor=None,
            outcome="success" if not report.failed else "partial",
            details={
                "key_id": report.key_id,
                "rotated": report.rotated,
                "current": report.current,
                "failed": report.failed[:100],
            },
        )
    return report
