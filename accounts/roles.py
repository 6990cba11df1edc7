"""Roles and token scopes: what each role may hold, and a user's role.

`viewer` < `operator` < `admin`. A role grants scopes (`read`, `launch`, `admin`); a request's
effective scopes are its user's role scopes, narrowed by the token's scopes when it came with a
token. `accounts.policy` decides every permission from these two facts and the run's owner.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import Role, UserRole

__all__ = ["ROLE_RANK", "ROLE_SCOPES", "SCOPES", "Role", "role_of", "scopes_of_role"]

SCOPES = ("read", "launch", "admin")
ROLE_RANK: dict[str, int] = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({"read"}),
    Role.OPERATOR: frozenset({"read", "launch"}),
    Role.ADMIN: frozenset({"read", "launch", "admin"}),
}


def role_of(user: Any) -> Role | None:
    """The role of an active, signed-in user; None for anonymous and deactivated users."""
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return None
    cached = getattr(user, "_role_cache", None)
    if cached is not None:
        return Role(cached)
    try:
        # Free when the user was loaded with select_related("role_record") (tokens are).
        role = Role(user.role_record.role)
    except UserRole.DoesNotExist:
        role = Role.VIEWER
    user._role_cache = role.value  # one query per request, not one per check
    return role


def scopes_of_role(role: Role | None) -> frozenset[str]:
    return ROLE_SCOPES[role] if role is not None else frozenset()


@receiver(post_save, sender="auth.User")
def _give_new_users_a_role(sender: Any, instance: Any, created: bool, raw: bool = False, **_: Any) -> None:
    """Every user has a role row from birth; `createsuperuser` makes an admin (the contract)."""
    if created and not raw:
        UserRole.objects.get_or_create(
            user_id=instance.pk, defaults={"role": Role.ADMIN if instance.is_superuser else Role.VIEWER}
        )
