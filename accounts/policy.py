"""Who may do what: the one permission mechanism.

Every entry point (REST views through `accounts.drf.PolicyPermission`, pages through
`accounts.pages.requires`, the run websocket, artifact downloads) builds a `Principal` for its
caller and asks `decide` about an `Action`, passing the run when the action is on one. A new
action without a rule cannot be allowed: `RULES` is total over `Action` (a test checks it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from accounts.models import ApiToken, Role
from accounts.roles import ROLE_RANK, role_of, scopes_of_role


class Action(enum.StrEnum):
    ACCOUNT_READ = "account.read"  # one's own profile: username, role, scopes
    RUN_READ = "run.read"
    RUN_LAUNCH = "run.launch"
    RUN_CANCEL = "run.cancel"
    RUN_RETRY = "run.retry"
    TOKEN_MANAGE = "token.manage"  # noqa: S105 - an action name. One's own tokens; admins: all
    DEAD_LETTER_MANAGE = "dead_letter.manage"
    AUDIT_READ = "audit.read"
    USER_MANAGE = "user.manage"
    SECRET_MANAGE = "secret.manage"  # noqa: S105 - an action name, not a secret


@dataclass(frozen=True)
class Rule:
    role: Role  # the lowest role that may act
    scope: str  # the scope a token must carry for it
    own_runs_only: bool = False  # below admin, only on runs the caller owns
    verb: str = ""


RULES: dict[Action, Rule] = {
    Action.ACCOUNT_READ: Rule(Role.VIEWER, "read", verb="read your account"),
    Action.RUN_READ: Rule(Role.VIEWER, "read", verb="read runs"),
    Action.RUN_LAUNCH: Rule(Role.OPERATOR, "launch", verb="launch runs"),
    Action.RUN_CANCEL: Rule(Role.OPERATOR, "launch", own_runs_only=True, verb="cancel runs"),
    Action.RUN_RETRY: Rule(Role.OPERATOR, "launch", own_runs_only=True, verb="retry runs"),
    Action.TOKEN_MANAGE: Rule(Role.VIEWER, "read", verb="manage API tokens"),
    Action.DEAD_LETTER_MANAGE: Rule(Role.ADMIN, "admin", verb="handle dead letters"),
    Action.AUDIT_READ: Rule(Role.ADMIN, "admin", verb="read the audit log"),
    Action.USER_MANAGE: Rule(Role.ADMIN, "admin", verb="manage users"),
    Action.SECRET_MANAGE: Rule(Role.ADMIN, "admin", verb="manage secrets"),
}


@dataclass(frozen=True)
class Principal:
    """A caller: its user, role, and the scopes this request carries."""

    user: Any
    role: Role | None
    scopes: frozenset[str]
    token: ApiToken | None = None

    @property
    def is_authenticated(self) -> bool:
        return self.role is not None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def principal_for(user: Any, token: ApiToken | None = None) -> Principal:
    """A session carries every scope of its user's role; a token only those it was issued with."""
    role = role_of(user)
    scopes = scopes_of_role(role)
    if token is not None:
        scopes = scopes & frozenset(token.scopes)
    return Principal(user=user if role is not None else None, role=role, scopes=scopes, token=token)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200  # 401 when the caller must sign in, 403 when the role or token forbids
    reason: str = ""


ALLOWED = Decision(True)


def decide(principal: Principal, action: Action, run: Any = None) -> Decision:
    rule = RULES[action]
    if principal.role is None:
        return Decision(False, 401, "Authentication credentials were not provided or are not valid.")
    if ROLE_RANK[principal.role] < ROLE_RANK[rule.role]:
        return Decision(False, 403, f"Your role ({principal.role}) may not {rule.verb}.")
    if rule.scope not in principal.scopes:
        return Decision(False, 403, f"This token lacks the '{rule.scope}' scope needed to {rule.verb}.")
    if (
        rule.own_runs_only
        and run is not None
        and not principal.is_admin
        and run.owner_id != principal.user.pk
    ):
        return Decision(False, 403, f"Operators may only {rule.verb} they own.")
    return ALLOWED


def can(principal: Principal, action: Action, run: Any = None) -> bool:
    return decide(principal, action, run).allowed


def record_denial(principal: Principal, action: Action | str, decision: Decision, target: Any = None) -> None:
    """Audit a refusal (a 403). Unauthenticated callers are not recorded: that is noise, not intent."""
    if decision.status != 403:
        return
    from audit import chain

    details: dict[str, Any] = {"action": str(action), "reason": decision.reason}
    if principal.token is not None:
        details["token_prefix"] = principal.token.prefix
    chain.record("access.denied", actor=principal.user, target=target, outcome="denied", details=details)
