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
        indexes = [models.Index(fields=["action", "-id"], name="audit_action_id")]

    def __str__(self) -> str:
        return f"{self.pk} {self.action} {self.target_type}:{self.target_id}"
