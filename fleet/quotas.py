"""GPU quotas: how many GPUs a user's runs may hold at once (a `Quota` row, else the role's
default from settings)."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import User

from accounts.roles import Role, role_of
from fleet.models import Quota


def role_default(role: Role | None) -> int:
    if role == Role.ADMIN:
        return int(settings.FLEET["GPU_QUOTA_ADMIN"] or 0)
    if role == Role.OPERATOR:
        return int(settings.FLEET["GPU_QUOTA_OPERATOR"] or 0)
    return 0  # viewers launch nothing


def gpu_limits(owner_ids: Iterable[int]) -> dict[int, int]:
    """owner id -> GPUs they may hold at once."""
    ids = set(owner_ids)
    limits = dict(Quota.objects.filter(user_id__in=ids).values_list("user_id", "max_gpus"))
    for user in User.objects.filter(pk__in=ids - set(limits)).select_related("role_record"):
        limits[user.pk] = role_default(role_of(user))
    return limits


def limit_of(user: User) -> tuple[int, bool]:
    """(limit, whether it is the role's default)."""
    quota = Quota.objects.filter(user=user).values_list("max_gpus", flat=True).first()
    if quota is not None:
        return int(quota), False
    return role_default(role_of(user)), True
