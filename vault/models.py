from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

# A secret reaches its program as an environment variable of the same name.
NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"


class Secret(models.Model):
    """A named value, stored only as Fernet ciphertext; the value is never read back out of the
    product, only injected into the runs whose owner may use it."""

    name = models.CharField(max_length=128, unique=True, validators=[RegexValidator(NAME_PATTERN)])
    ciphertext = models.TextField()
    key_id = models.CharField(max_length=16)  # fingerprint of the key that encrypted it
    allowed_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="usable_secrets"
    )
    allowed_roles = models.JSONField(default=list, blank=True)  # every user of these roles may use it
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
