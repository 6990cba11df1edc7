from __future__ import annotations

from django.db import models
from django.utils import timezone


class AuditRecord(models.Model):
    """One append-only, hash-chained record of a change.

    No foreign keys: a record must outlive what it names (a deleted user, a purged run), and a
    cascade would have to UPDATE or DELETE rows that the database trigger forbids touching.
    """

    created_at = models.DateTimeField(default=timezone.now)
    actor_id = models.BigIntegerField(null=True)
    actor = models.CharField(max_length=150, blank=True)
    actor_role = models.CharField(max_length=32, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16, default="success")
    ip = models.CharField(max_length=64, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        indexes = [
            models.Index(fields=["action", "-id"], name="audit_action_id"),
            # The admin pages and GET /api/v1/audit/ filter by these, newest first.
            models.Index(fields=["actor", "-id"], name="audit_actor_id"),
            models.Index(fields=["target_type", "target_id", "-id"], name="audit_target_id"),
            models.Index(fields=["created_at"], name="audit_created_at"),
        ]

    def __str__(self) -> str:
        return f"{self.pk} {self.action} {self.target_type}:{self.target_id}"


class AuditCheckpoint(models.Model):
    """A signed statement that the chain held `record_count` records ending in `head_hash`.

    The HMAC key lives outside the database (`audit.keys`), so whoever can rewrite the audit table,
    even recomputing every hash, cannot produce a checkpoint that matches the rewrite. Each
    checkpoint also signs its predecessor's signature, so deleting one breaks the next.
    """

    created_at = models.DateTimeField(default=timezone.now)
    head_id = models.BigIntegerField()
    head_hash = models.CharField(max_length=64)
    record_count = models.BigIntegerField()
    key_id = models.CharField(max_length=16)
    prev_signature = models.CharField(max_length=64)
    signature = models.CharField(max_length=64, unique=True)

    def __str__(self) -> str:
        return f"checkpoint {self.pk}: records 1-{self.head_id}"
