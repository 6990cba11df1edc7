"""Who may do what, and on which rows: the one permission mechanism.

Two questions, one table each. `decide(principal, action, row)` answers whether a caller may act
at all (and on one row when given); `restrict(principal, action, queryset)` narrows a queryset to
the rows it may act on (none when it may not act). Every entry point (REST views through
`accounts.drf.PolicyPermission`, pages through `accounts.pages`, the run websocket, artifact
downloads, the selectors of runs and secrets) builds a `Principal` for its caller and asks one of
them. A new action without a rule cannot be allowed: `RULES` is total over `Action` (a test
checks it); a model whose rows are narrowed needs a `ROW_RULES` entry (`restrict` refuses
otherwise, and `manage.py check` validates every entry against the models).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from functools import reduce
from operator import or_
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist
from django.db.models import Model, Q, QuerySet

from accounts.models import ApiToken, Role
from accounts.roles import ROLE_RANK, role_of, scopes_of_role

RowModel = TypeVar("RowModel", bound=Model)


class Action(enum.StrEnum):
    ACCOUNT_READ = "account.read"  # one's own profile: username, role, scopes
    RUN_READ = "run.read"
    RUN_LAUNCH = "run.launch"
    RUN_CANCEL = "run.cancel"
    RUN_RETRY = "run.retry"
    TOKEN_READ = "token.read"  # noqa: S105 - an action name. One's own tokens; admins: all
    TOKEN_MANAGE = "token.manage"  # noqa: S105 - issue, revoke. One's own; others': the admin scope
    DEAD_LETTER_MANAGE = "dead_letter.manage"
    AUDIT_READ = "audit.read"
    USER_MANAGE = "user.manage"
    SECRET_MANAGE = "secret.manage"  # noqa: S105 - an action name, not a secret
    SECRET_USE = "secret.use"  # noqa: S105 - give a secret to one's run: those granted; admins: all
    FLEET_READ = "fleet.read"  # workers, devices, pools; one's own GPU quota (admins: all)
    FLEET_MANAGE = "fleet.manage"  # drain workers, set users' GPU quotas
    RUN_CODE = "run.code"  # upload a code snapshot and launch it; the lowest role is a setting
    PROGRAM_MANAGE = "program.manage"  # register, edit, retire catalog programs; infer params schemas
    RUN_REPORT = "run.report"  # tracking mode: log lines, metrics, status, artifacts into an external run


@dataclass(frozen=True)
class Reach:
    """Who may act on rows that are not the caller's own: this role or above, with this scope."""

    role: Role
    scope: str


# Acting on other people's rows is the admin's power, so it takes the admin scope as well as the
# role: an admin's `read` or `launch` token acts on its own rows only, like an operator's.
ADMINS = Reach(Role.ADMIN, "admin")


@dataclass(frozen=True)
class Rule:
    role: Role  # the lowest role that may act
    scope: str  # the scope a token must carry for it
    # None: every row the action applies to. Else below `others`, only the caller's own rows (what
    # "own" means per model is its `ROW_RULES` entry).
    others: Reach | None = None
    verb: str = ""


RULES: dict[Action, Rule] = {
    Action.ACCOUNT_READ: Rule(Role.VIEWER, "read", verb="read your account"),
    Action.RUN_READ: Rule(Role.VIEWER, "read", verb="read runs"),
    Action.RUN_LAUNCH: Rule(Role.OPERATOR, "launch", verb="launch runs"),
    Action.RUN_CANCEL: Rule(Role.OPERATOR, "launch", others=ADMINS, verb="cancel runs"),
    Action.RUN_RETRY: Rule(Role.OPERATOR, "launch", others=ADMINS, verb="retry runs"),
    # Seeing everyone's tokens is a read; revoking them is not.
    Action.TOKEN_READ: Rule(Role.VIEWER, "read", others=Reach(Role.ADMIN, "read"), verb="see API tokens"),
    Action.TOKEN_MANAGE: Rule(Role.VIEWER, "read", others=ADMINS, verb="manage API tokens"),
    Action.DEAD_LETTER_MANAGE: Rule(Role.ADMIN, "admin", verb="handle dead letters"),
    Action.AUDIT_READ: Rule(Role.ADMIN, "admin", verb="read the audit log"),
    Action.USER_MANAGE: Rule(Role.ADMIN, "admin", verb="manage users"),
    Action.SECRET_MANAGE: Rule(Role.ADMIN, "admin", verb="manage secrets"),
    # Secrets are used by the runs one launches, so using one takes what launching takes.
    Action.SECRET_USE: Rule(Role.OPERATOR, "launch", others=ADMINS, verb="use secrets"),
    Action.FLEET_READ: Rule(Role.VIEWER, "read", verb="see the fleet"),
    Action.FLEET_MANAGE: Rule(Role.ADMIN, "admin", verb="manage the fleet"),
    # Running one's own code is running arbitrary code on the workers: the lowest role that may is
    # CONTROLPLANE_RUN_CODE_ROLE (operator by default), read when asked (`rule_for`).
    Action.RUN_CODE: Rule(Role.OPERATOR, "launch", verb="run their own code"),
    # A program's command runs on every worker (and inference runs it on the web host): admins only.
    Action.PROGRAM_MANAGE: Rule(Role.ADMIN, "admin", verb="manage programs"),
    # Reporting into an external run is what its launcher does: its owner with `launch`, or the
    # run-scoped token issued when it started (`run_scoped_decision`).
    Action.RUN_REPORT: Rule(Role.OPERATOR, "launch", others=ADMINS, verb="report into runs"),
}
# Actions whose lowest role is a setting (its name in django.conf.settings).
ROLE_SETTINGS: dict[Action, str] = {Action.RUN_CODE: "RUN_CODE_ROLE"}


def rule_for(action: Action) -> Rule:
    """`RULES[action]`, with the role a setting names where `ROLE_SETTINGS` says so."""
    rule = RULES[action]
    if action in ROLE_SETTINGS:
        return replace(rule, role=Role(getattr(settings, ROLE_SETTINGS[action])))
    return rule


# The one scope of a run-scoped token: it reports into its run and does nothing else.
RUN_REPORT_SCOPE = "report"


@dataclass(frozen=True)
class RowRule:
    """What makes a row of one model the caller's own (or granted to it); any non-empty part does.

    Field paths, so one declaration gives both the queryset filter (`restrict`) and the check of
    one row (`decide`).
    """

    owner: str = ""  # the path to the owning user ("owner", "run__owner"): the row is its owner's
    users: str = ""  # a many-to-many of users the row is granted to
    roles: str = ""  # a JSON list of roles the row is granted to
    phrase: str = "they own"  # how a refusal names the rows one may act on

    def own(self, principal: Principal, model: type[Model]) -> Q:
        user_pk = principal.user.pk
        parts: list[Q] = []
        if self.owner:
            parts.append(Q(**{self.owner: user_pk}))
        if self.users:
            # A subquery, not a join: a join would repeat a row once per user it is granted to.
            parts.append(Q(pk__in=model._default_manager.filter(**{self.users: user_pk}).values("pk")))
        if self.roles and principal.role is not None:
            parts.append(Q(**{f"{self.roles}__contains": [principal.role.value]}))
        return reduce(or_, parts) if parts else Q(pk__in=[])

    def holds(self, principal: Principal, row: Model) -> bool:
        if self.owner and "__" not in self.owner and not (self.users or self.roles):
            # The owner's id is on the row already: no query.
            attname = getattr(row._meta.get_field(self.owner), "attname", self.owner)  # "owner_id"
            return bool(getattr(row, attname) == principal.user.pk)
        model = type(row)
        return bool(model._default_manager.filter(self.own(principal, model), pk=row.pk).exists())


# One entry per model whose rows an action narrows to the caller's own, keyed by the model's label
# rather than its class: the models of runs and vault sit above accounts in the layer map, and a
# string names them without importing them, so every model's rule is written here once, next to
# RULES, and read in one place. `check_row_rules` (a system check) proves each label and field
# path exists. Models whose every action reaches every row it allows (users, audit records, dead
# letters as a list) need no entry.
ROW_RULES: dict[str, RowRule] = {
    "runs.run": RowRule(owner="owner"),
    "runs.artifact": RowRule(owner="run__owner"),  # an artifact is its run's
    "accounts.apitoken": RowRule(owner="user"),
    "vault.secret": RowRule(users="allowed_users", roles="allowed_roles", phrase="granted to them"),
}


def row_rule(model: type[Model]) -> RowRule:
    try:
        return ROW_RULES[model._meta.label_lower]
    except KeyError:
        raise LookupError(f"accounts.policy.ROW_RULES has no rule for {model._meta.label}") from None


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
    if token is not None and token.run_id is not None:
        # A run-scoped token: its run's owner may (still) launch, or it carries nothing.
        scopes = frozenset({RUN_REPORT_SCOPE}) if "launch" in scopes else frozenset()
    elif token is not None:
        scopes = scopes & frozenset(token.scopes)
    return Principal(user=user if role is not None else None, role=role, scopes=scopes, token=token)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200  # 401 when the caller must sign in, 403 when the role or token forbids
    reason: str = ""


ALLOWED = Decision(True)


def reaches_every_row(principal: Principal, action: Action) -> bool:
    """Whether `principal`'s role and scopes reach other people's rows for `action`."""
    others = RULES[action].others
    if others is None:
        return True
    if principal.role is None:
        return False
    return ROLE_RANK[principal.role] >= ROLE_RANK[others.role] and others.scope in principal.scopes


def _row_refusal(principal: Principal, action: Action, row: Model) -> Decision:
    rule = RULES[action]
    assert rule.others is not None and principal.role is not None  # only asked below `others`
    if ROLE_RANK[principal.role] >= ROLE_RANK[rule.others.role]:
        reason = f"This token lacks the '{rule.others.scope}' scope needed to {rule.verb} of other users."
    else:
        reason = f"{principal.role.capitalize()}s may only {rule.verb} {row_rule(type(row)).phrase}."
    return Decision(False, 403, reason)


def decide(principal: Principal, action: Action, row: Model | None = None) -> Decision:
    """May `principal` do `action` (on `row`, when given)? A row it may not act on is a 403:
    whether it may *see* the row (else a 404) is `restrict` with a read action, asked first."""
    rule = rule_for(action)
    if principal.role is None:
        return Decision(False, 401, "Authentication credentials were not provided or are not valid.")
    if principal.token is not None and principal.token.run_id is not None:
        return run_scoped_decision(principal, action, row)
    if ROLE_RANK[principal.role] < ROLE_RANK[rule.role]:
        return Decision(False, 403, f"Your role ({principal.role}) may not {rule.verb}.")
    if rule.scope not in principal.scopes:
        return Decision(False, 403, f"This token lacks the '{rule.scope}' scope needed to {rule.verb}.")
    if action == Action.RUN_RETRY and getattr(row, "kind", "") == "code":
        # Retrying a code run runs its code again: who may is RUN_CODE's rule, as for its launch
        # (the setting may have changed since); here, so the API and the pages' buttons agree.
        code = decide(principal, Action.RUN_CODE)
        if not code.allowed:
            return code
    if row is None or reaches_every_row(principal, action):
        return ALLOWED
    # Below `others`, the row must be the caller's own (what that is: its model's ROW_RULES entry).
    if not row_rule(type(row)).holds(principal, row):
        return _row_refusal(principal, action, row)
    return ALLOWED


def run_scoped_decision(principal: Principal, action: Action, row: Model | None) -> Decision:
    """A run-scoped token (tracking mode) reports into its one run: every other action, and every
    other run, is a 403 (whether that run exists or not, so it learns nothing about others)."""
    assert principal.token is not None
    run_id = principal.token.run_id
    if action != Action.RUN_REPORT or RUN_REPORT_SCOPE not in principal.scopes:
        return Decision(False, 403, f"This token may only report into run {run_id}.")
    if row is not None and (row._meta.label_lower != "runs.run" or row.pk != run_id):
        return Decision(False, 403, f"This token may only report into run {run_id}.")
    return ALLOWED


def can(principal: Principal, action: Action, row: Model | None = None) -> bool:
    return decide(principal, action, row).allowed


def restrict(principal: Principal, action: Action, queryset: QuerySet[RowModel]) -> QuerySet[RowModel]:
    """`queryset` narrowed to the rows `principal` may `action`: none when it may not act at all,
    all of them when its role and scopes reach other people's rows, else its own."""
    if not decide(principal, action).allowed:
        return queryset.none()
    if principal.token is not None and principal.token.run_id is not None:
        return (
            queryset.filter(pk=principal.token.run_id)
            if queryset.model._meta.label_lower == "runs.run"
            else queryset.none()
        )
    if reaches_every_row(principal, action):
        return queryset
    return queryset.filter(row_rule(queryset.model).own(principal, queryset.model))


def record_denial(principal: Principal, action: Action | str, decision: Decision, target: Any = None) -> None:
    """Audit a refusal (a 403). Unauthenticated callers are not recorded: that is noise, not intent."""
    if decision.status != 403:
        return
    from audit import chain

    details: dict[str, Any] = {"action": str(action), "reason": decision.reason}
    if principal.token is not None:
        details["token_prefix"] = principal.token.prefix
    chain.record("access.denied", actor=principal.user, target=target, outcome="denied", details=details)


def _path_problem(model: type[Model], path: str) -> str | None:
    for name in path.split("__"):
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            return f"{model._meta.label} has no field {name!r} (in {path!r})"
        model = field.related_model or model  # type: ignore[assignment]
    return None


def check_row_rules(**_: Any) -> list[checks.CheckMessage]:
    """ROW_RULES names models by label: a typo or a renamed field must stop `manage.py check`."""
    problems: list[checks.CheckMessage] = []
    for label, rule in ROW_RULES.items():
        try:
            model = apps.get_model(label)
        except LookupError:
            problems.append(checks.Error(f"ROW_RULES names {label!r}, which is no model", id="accounts.E001"))
            continue
        for path in filter(None, (rule.owner, rule.users, rule.roles)):
            if problem := _path_problem(model, path):
                problems.append(checks.Error(f"ROW_RULES[{label!r}]: {problem}", id="accounts.E002"))
    return problems
