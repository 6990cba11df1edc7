"""User management: create, change role, (de)activate, reset password. Every change is audited."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken, Role, UserRole
from audit import chain as audit

USERNAME_PATTERN = re.compile(r"^[\w.@+-]{1,150}$")
MAX_PASSWORD_LENGTH = 256


class UserError(Exception):
    """A refused change, with messages by field."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


def _check_role(value: Any) -> Role:
    if value not in Role.values:
        raise UserError({"role": f"must be one of {', '.join(Role.values)}"})
    return Role(value)


def _check_password(password: Any, user: User | None = None) -> str:
    if not isinstance(password, str) or not password:
        raise UserError({"password": "a non-empty string is required"})
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError({"password": f"must be at most {MAX_PASSWORD_LENGTH} characters"})
    try:
        validate_password(password, user)
    except DjangoValidationError as error:
        raise UserError({"password": " ".join(error.messages)}) from None
    return password


def _sync_django_flags(user: User, role: Role) -> None:
    # Nothing reads these flags (there is no Django admin site; the product reads the role); kept in
    # step so `createsuperuser` and the flags never tell a different story from the role.
    user.is_staff = user.is_superuser = role == Role.ADMIN


def do_create_user(actor: User | None, *, username: Any, password: Any, role: Any, email: Any = "") -> User:
    errors: dict[str, str] = {}
    if not isinstance(username, str) or not USERNAME_PATTERN.match(username):
        errors["username"] = "1 to 150 letters, digits and @ . + - _"
    elif User.objects.filter(username__iexact=username).exists():
        errors["username"] = "a user with this username already exists"
    if not isinstance(email, str) or len(email) > 254:
        errors["email"] = "must be a string of at most 254 characters"
    try:
        checked_role = _check_role(role)
    except UserError as error:
        errors.update(error.errors)
    if errors:
        raise UserError(errors)
    candidate = User(username=username, email=email)
    _check_password(password, candidate)
    with transaction.atomic():
        user = User.objects.create_user(username=username, email=email, password=password)
        _sync_django_flags(user, checked_role)
        user.save(update_fields=["is_staff", "is_superuser"])
        UserRole.objects.update_or_create(user=user, defaults={"role": checked_role})
        audit.record(
            "user.create", actor=actor, target=user, details={"username": username, "role": checked_role}
        )
    return user


def _other_active_admins(user: User) -> bool:
    return UserRole.objects.filter(role=Role.ADMIN, user__is_active=True).exclude(user_id=user.pk).exists()


def do_set_role(actor: User | None, user: User, role: Any) -> User:
    new_role = _check_role(role)
    with transaction.atomic():
        record, _ = UserRole.objects.select_for_update().get_or_create(user=user)
        old_role = Role(record.role)
        if old_role == new_role:
            return user
        if old_role == Role.ADMIN and not _other_active_admins(user):
            raise UserError({"role": "the last active admin cannot be demoted"})
        record.role = new_role
        record.save(update_fields=["role", "updated_at"])
        _sync_django_flags(user, new_role)
        user.save(update_fields=["is_staff", "is_superuser"])
        user.__dict__.pop("_role_cache", None)
        user._state.fields_cache.pop("role_record", None)
        audit.record("user.role_change", actor=actor, target=user, details={"from": old_role, "to": new_role})
    return user


def do_set_active(actor: User | None, user: User, active: Any) -> User:
    if not isinstance(active, bool):
        raise UserError({"is_active": "must be true or false"})
    if user.is_active == active:
        return user
    with transaction.atomic():
        is_admin = UserRole.objects.filter(user=user, role=Role.ADMIN).exists()
        if not active and is_admin and not _other_active_admins(user):
            raise UserError({"is_active": "the last active admin cannot be deactivated"})
        user.is_active = active
        user.save(update_fields=["is_active"])
        if not active:
            # Sessions die with the account (the auth backend refuses inactive users); tokens too.
            ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
        audit.record("user.activate" if active else "user.deactivate", actor=actor, target=user)
    return user


def do_reset_password(actor: User | None, user: User, password: Any) -> User:
    _check_password(password, user)
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        audit.record("user.password_reset", actor=actor, target=user)
    return user
