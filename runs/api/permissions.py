from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


def is_admin(user: Any) -> bool:
    """Admins until roles arrive: Django superusers and staff."""
    return bool(user and user.is_authenticated and (user.is_superuser or user.is_staff))


class IsAdmin(BasePermission):
    message = "Only admins may do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_admin(request.user)
