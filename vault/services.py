"""Writes on secrets, and the two places they are used: the launch check and a run's claim.

Every change and every use is audited (`secret.create`, `secret.update`, `secret.delete`,
`secret.use`) in the same transaction as the change; no audit detail ever carries a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import structlog
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.policy import Action, can, principal_for
from accounts.roles import Role
from audit import chain as audit
from redaction import MIN_SECRET_LENGTH, Redactor
from vault import crypto
from vault.models import NAME_PATTERN, Secret

log = structlog.get_logger(__name__)

MAX_VALUE_LENGTH = 32 * 1024
MAX_ALLOWED_USERS = 1_000
_NAME = re.compile(NAME_PATTERN)
# Names the supervisor sets itself, or that change how the program's interpreter loads code.
RESERVED_NAMES = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PWD", "SHELL"}
)
RESERVED_PREFIXES = ("CONTROLPLANE_", "PYTHON", "LD_")
UNSET: Any = object()

Actor = AbstractBaseUser | AnonymousUser | None


class SecretError(Exception):
    """Bad input; `errors` maps each field to one message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class SecretUnavailable(Exception):
    """A run's secret cannot be given to it. `transient`: a worker configuration problem that
    another attempt (on another worker) may not have; otherwise the run's own problem."""

    def __init__(self, message: str, *, code: str, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


# -- checks ----------------------------------------------------------------------------------


def name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return "a name is required"
    if not _NAME.match(name):
        return (
            f"{name[:64]!r} is not a valid environment variable name: upper-case letters, digits "
            "and _, not starting with a digit, at most 128 characters"
        )
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        return f"{name!r} is reserved for the control plane or the program's runtime"
    return None


def value_problem(value: Any) -> str | None:
    # Messages never quote the value: they end up in responses and logs.
    if not isinstance(value, str):
        return "a string value is required"
    if len(value) < MIN_SECRET_LENGTH:
        return (
            f"must be at least {MIN_SECRET_LENGTH} characters, so that redacting it cannot mask ordinary text"
        )
    if len(value) > MAX_VALUE_LENGTH:
        return f"must be at most {MAX_VALUE_LENGTH} characters"
    if "\x00" in value:
        return "must not contain NUL characters (an environment variable cannot hold them)"
    return None


def _users(usernames: Any, errors: dict[str, str]) -> list[Any]:
    if not isinstance(usernames, list) or not all(isinstance(u, str) for u in usernames):
        errors["allowed_users"] = "must be a list of usernames"
        return []
    if len(usernames) > MAX_ALLOWED_USERS:
        errors["allowed_users"] = f"at most {MAX_ALLOWED_USERS} users"
        return []
    wanted = list(dict.fromkeys(usernames))
    # Names no user can have (and NUL, which Postgres refuses outright) are unknown, not a 500.
    possible = [name for name in wanted if 0 < len(name) <= 150 and "\x00" not in name]
    found = {user.get_username(): user for user in get_user_model().objects.filter(username__in=possible)}
    unknown = [name for name in wanted if name not in found]
    if unknown:
        errors["allowed_users"] = f"unknown user {unknown[0][:150]!r}"
        return []
    return [found[name] for name in wanted]


def _roles(roles: Any, errors: dict[str, str]) -> list[str]:
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        errors["allowed_roles"] = "must be a list of roles"
        return []
    unknown = [role for role in roles if role not in Role.values]
    if unknown:
        errors["allowed_roles"] = f"unknown role {unknown[0][:32]!r}; use {', '.join(Role.values)}"
        return []
    return sorted(set(roles), key=Role.values.index)


def may_use(user: Any, secret: Secret) -> bool:
    """Admins may use any secret; others when named, or when their role is (`accounts.policy`'s
    row rule for `secret.use`, with the user's own rights: see `selectors.usable_secrets`)."""
    return can(principal_for(user), Action.SECRET_USE, secret)


def _grants(secret: Secret) -> dict[str, Any]:
    return {
        "allowed_users": sorted(secret.allowed_users.values_list("username", flat=True)),
        "allowed_roles": list(secret.allowed_roles),
    }


# -- writes ----------------------------------------------------------------------------------


def _refuse(actor: Actor, action: str, errors: dict[str, str], name: Any, target: Any = None) -> NoReturn:
    """Bad input is refused with a 400 and audited (messages only: they never quote a value)."""
    shown = name[:128] if isinstance(name, str) else type(name).__name__
    audit.record(
        action, actor=actor, target=target, outcome="denied", details={"name": shown, "errors": errors}
    )
    raise SecretError(errors)


def do_create_secret(
    actor: Actor,
    *,
    name: Any,
    value: Any,
    allowed_users: Any = None,
    allowed_roles: Any = None,
) -> Secret:
    errors: dict[str, str] = {}
    if problem := name_problem(name):
        errors["name"] = problem
    if problem := value_problem(value):
        errors["value"] = problem
    users = _users(allowed_users, errors) if allowed_users is not None else []
    roles = _roles(allowed_roles, errors) if allowed_roles is not None else []
    if "name" not in errors and Secret.objects.filter(name=name).exists():
        errors["name"] = f"a secret named {name!r} already exists"
    if errors:
        _refuse(actor, "secret.create", errors, name)
    ring = crypto.keyring()
    by = actor if isinstance(actor, User) else None
    try:
        with transaction.atomic():
            secret = Secret.objects.create(
                name=name,
                ciphertext=ring.encrypt(value),
                key_id=ring.newest_id,
                allowed_roles=roles,
                created_by=by,
                updated_by=by,
            )
            secret.allowed_users.set(users)
            audit.record(
                "secret.create", actor=actor, target=secret, details={"name": name, **_grants(secret)}
            )
    except IntegrityError:
        # Two creates of the same name raced past the check above; the unique index decided.
        raise SecretError({"name": f"a secret named {name!r} already exists"}) from None
    log.info("secret_created", secret=name)
    return secret


def do_update_secret(
    actor: Actor,
    secret: Secret,
    *,
    value: Any = UNSET,
    allowed_users: Any = UNSET,
    allowed_roles: Any = UNSET,
) -> Secret:
    errors: dict[str, str] = {}
    if value is not UNSET and (problem := value_problem(value)):
        errors["value"] = problem
    users = _users(allowed_users, errors) if allowed_users is not UNSET else None
    roles = _roles(allowed_roles, errors) if allowed_roles is not UNSET else None
    if errors:
        _refuse(actor, "secret.update", errors, secret.name, target=secret)
    ring = crypto.keyring() if value is not UNSET else None
    changed: list[str] = []
    with transaction.atomic():
        locked = Secret.objects.select_for_update().get(pk=secret.pk)
        if ring is not None:
            locked.ciphertext = ring.encrypt(value)
            locked.key_id = ring.newest_id
            changed.append("value")
        if roles is not None and roles != locked.allowed_roles:
            locked.allowed_roles = roles
            changed.append("allowed_roles")
        if users is not None:
            before = set(locked.allowed_users.values_list("pk", flat=True))
            if before != {user.pk for user in users}:
                locked.allowed_users.set(users)
                changed.append("allowed_users")
        locked.updated_at = timezone.now()
        locked.updated_by = actor if isinstance(actor, User) else None
        locked.save()
        audit.record(
            "secret.update",
            actor=actor,
            target=locked,
            details={"name": locked.name, "changed": changed, **_grants(locked)},
        )
    log.info("secret_updated", secret=locked.name, changed=changed)
    return locked


def do_delete_secret(actor: Actor, secret: Secret) -> None:
    with transaction.atomic():
        audit.record("secret.delete", actor=actor, target=secret, details={"name": secret.name})
        Secret.objects.filter(pk=secret.pk).delete()
    log.info("secret_deleted", secret=secret.name)


# -- use -------------------------------------------------------------------------------------


def check_usable(user: Any, names: Sequence[str]) -> list[str]:
    """Problems with the secrets a launch names, one message each; a refusal is audited."""
    found = {secret.name: secret for secret in Secret.objects.filter(name__in=names)}
    problems: list[str] = []
    for name in names:
        secret = found.get(name)
        if secret is None:
            problems.append(f"unknown secret {name!r}")
        elif not may_use(user, secret):
            problems.append(f"{name!r} is not allowed to you")
            audit.record(
                "secret.use",
                actor=user,
                target=secret,
                outcome="denied",
                details={"name": name, "reason": "not allowed to the launching user"},
            )
    return problems


def resolve_for_run(*, run_id: int, attempt: int, owner: Any, names: Iterable[str]) -> dict[str, str]:
    """The values of a run's secrets, for its program's environment; each use is audited.

    Checked again at claim time: a secret deleted or withdrawn from the owner since the launch
    is not handed out.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    found = {secret.name: secret for secret in Secret.objects.filter(name__in=wanted)}
    for name in wanted:
        secret = found.get(name)
        if secret is None:
            raise SecretUnavailable(f"secret {name!r} no longer exists", code="unknown_secret")
        if not may_use(owner, secret):
            audit.record(
                "secret.use",
                actor=owner,
                target=secret,
                outcome="denied",
                details={"name": name, "run_id": run_id, "attempt": attempt, "reason": "not allowed"},
            )
            raise SecretUnavailable(
                f"secret {name!r} is no longer allowed to the run's owner", code="secret_not_allowed"
            )
    # The run's own problems (above) come first: they fail the run, this only the attempt.
    try:
        ring = crypto.keyring()
    except crypto.NotConfigured as error:
        raise SecretUnavailable(str(error), code="secrets_not_configured", transient=True) from None
    values: dict[str, str] = {}
    for name in wanted:
        secret = found[name]
        try:
            values[name] = ring.decrypt(secret.ciphertext)
        except crypto.Undecryptable:
            raise SecretUnavailable(
                f"secret {name!r} cannot be decrypted with this worker's CONTROLPLANE_SECRETS_KEY",
                code="secret_undecryptable",
                transient=True,
            ) from None
    with transaction.atomic():
        for name in wanted:
            audit.record(
                "secret.use",
                actor=owner,
                target=found[name],
                details={"name": name, "run_id": run_id, "attempt": attempt},
            )
        Secret.objects.filter(name__in=wanted).update(last_used_at=timezone.now())
    return values


def masking_redactor(names: Iterable[str]) -> Redactor:
    """A redactor for the current values of the named secrets, for what a program wrote and the
    web reads back at request time (a model file's header). Masking is not a use: no audit record;
    a secret gone or undecryptable here is skipped (its stored copies were masked when written)."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return Redactor()
    try:
        ring = crypto.keyring()
    except crypto.NotConfigured:
        return Redactor()
    values = []
    for secret in Secret.objects.filter(name__in=wanted):
        try:
            values.append(ring.decrypt(secret.ciphertext))
        except crypto.Undecryptable:
            continue
    return Redactor(values)
