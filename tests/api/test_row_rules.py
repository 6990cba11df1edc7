"""`accounts.policy.restrict`: which rows each caller may act on, per model and per role.

Personas: a viewer, the operator who owns the rows, another operator, an admin by session, and an
admin's `read` and `read,launch` tokens. Each case names the rows the caller gets back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.db.models import Model, QuerySet

from accounts import policy
from accounts.models import ApiToken
from accounts.policy import Action, Principal, decide, principal_for, restrict
from accounts.tokens import do_issue_token
from audit import chain
from audit.models import AuditRecord
from runs import selectors
from runs.models import Artifact, Run, RunStatus
from tests.conftest import make_user
from vault.models import Secret
from vault.selectors import usable_secret_names
from vault.services import do_create_secret


@dataclass
class World:
    principals: dict[str, Principal]
    rows: dict[str, Model]


def _token_principal(user: User, scopes: list[str]) -> Principal:
    return principal_for(user, do_issue_token(user, scopes=scopes).token)


@pytest.fixture
def world(db: Any) -> World:
    viewer, owner = make_user("vera", "viewer"), make_user("olivia", "operator")
    other, admin = make_user("tomas", "operator"), make_user("ada", "admin")
    rows: dict[str, Model] = {
        "olivias_run": (
            olivias_run := Run.objects.create(name="o", owner=owner, program="scripted", queue="rows")
        ),
        "tomas_run": Run.objects.create(name="t", owner=other, program="scripted", queue="rows"),
        "adas_run": Run.objects.create(name="a", owner=admin, program="scripted", queue="rows"),
        "dead_run": Run.objects.create(
            name="d", owner=owner, program="scripted", queue="rows", status=RunStatus.DEAD
        ),
        "olivias_token": do_issue_token(owner, name="o").token,
        "tomas_token": do_issue_token(other, name="t").token,
        "adas_token": do_issue_token(admin, name="a").token,
        "by_name": do_create_secret(admin, name="BY_NAME", value="value-1234", allowed_users=["olivia"]),
        "by_role": do_create_secret(admin, name="BY_ROLE", value="value-1234", allowed_roles=["operator"]),
        "admins_only": do_create_secret(admin, name="ADMINS_ONLY", value="value-1234"),
        "record": chain.record("rows.seed", actor=owner),
    }
    rows["artifact"] = Artifact.objects.create(
        run=olivias_run,
        attempt=1,
        name="m.bin",
        kind="file",
        size=1,
        sha256="0" * 64,
        storage_key="k",
    )
    principals = {
        "anonymous": principal_for(None),
        "viewer": principal_for(viewer),
        "owner": principal_for(owner),
        "other_operator": principal_for(other),
        "admin": principal_for(admin),
        "admin_read_token": _token_principal(admin, ["read"]),
        "admin_launch_token": _token_principal(admin, ["read", "launch"]),
    }
    return World(principals, rows)


RUNS = {"olivias_run", "tomas_run", "adas_run", "dead_run"}
TOKENS = {"olivias_token", "tomas_token", "adas_token"}
SECRETS = {"by_name", "by_role", "admins_only"}
EVERYONE = ("viewer", "owner", "other_operator", "admin", "admin_read_token", "admin_launch_token")

# (action, model, persona) -> the rows it may act on; personas left out of a table get none.
CASES: dict[tuple[Action, type[Model]], dict[str, set[str]]] = {
    (Action.RUN_READ, Run): dict.fromkeys(EVERYONE, RUNS),
    (Action.RUN_READ, Artifact): {persona: {"artifact"} for persona in EVERYONE},
    (Action.RUN_CANCEL, Run): {
        "owner": {"olivias_run", "dead_run"},
        "other_operator": {"tomas_run"},
        "admin": RUNS,
        "admin_launch_token": {"adas_run"},  # other people's runs need the admin scope
    },
    (Action.RUN_RETRY, Run): {
        "owner": {"olivias_run", "dead_run"},
        "other_operator": {"tomas_run"},
        "admin": RUNS,
        "admin_launch_token": {"adas_run"},
    },
    (Action.TOKEN_READ, ApiToken): {
        "viewer": set(),
        "owner": {"olivias_token"},
        "other_operator": {"tomas_token"},
        "admin": TOKENS,
        "admin_read_token": TOKENS,  # seeing everyone's tokens is a read
        "admin_launch_token": TOKENS,
    },
    (Action.TOKEN_MANAGE, ApiToken): {
        "owner": {"olivias_token"},
        "other_operator": {"tomas_token"},
        "admin": TOKENS,
        "admin_read_token": {"adas_token"},  # revoking other people's is not
        "admin_launch_token": {"adas_token"},
    },
    (Action.SECRET_USE, Secret): {
        "owner": {"by_name", "by_role"},
        "other_operator": {"by_role"},
        "admin": SECRETS,
    },
    (Action.SECRET_MANAGE, Secret): {"admin": SECRETS},
    (Action.AUDIT_READ, AuditRecord): {"admin": {"record"}},
    (Action.DEAD_LETTER_MANAGE, Run): {"admin": RUNS},
}


def _names(world: World, queryset: QuerySet[Any]) -> set[str]:
    found = set(queryset.values_list("pk", flat=True))
    model = queryset.model
    return {name for name, row in world.rows.items() if isinstance(row, model) and row.pk in found}


def _only(world: World, model: type[Model]) -> QuerySet[Any]:
    """The model's rows of this world (the audit log also holds records the fixtures wrote)."""
    return model._default_manager.filter(
        pk__in=[row.pk for row in world.rows.values() if isinstance(row, model)]
    )


def test_restrict_and_decide_give_each_persona_exactly_its_rows_of_each_model(world: World) -> None:
    # One world for every case: building the personas (password hashing) is most of the cost.
    for (action, model), expected in CASES.items():
        for persona, principal in world.principals.items():
            wanted = expected.get(persona, set())
            narrowed = _names(world, restrict(principal, action, _only(world, model)))
            assert narrowed == wanted, ("restrict", persona, action, model.__name__)
            one_by_one = {
                name
                for name, row in world.rows.items()
                if isinstance(row, model) and decide(principal, action, row).allowed
            }
            assert one_by_one == wanted, ("decide", persona, action, model.__name__)


def test_refusals_name_the_rule(world: World) -> None:
    tomas_run, tomas_token = world.rows["tomas_run"], world.rows["tomas_token"]
    assert decide(world.principals["owner"], Action.RUN_CANCEL, tomas_run).reason == (
        "Operators may only cancel runs they own."
    )
    assert decide(world.principals["admin_read_token"], Action.TOKEN_MANAGE, tomas_token).reason == (
        "This token lacks the 'admin' scope needed to manage API tokens of other users."
    )
    assert decide(world.principals["other_operator"], Action.SECRET_USE, world.rows["by_name"]).reason == (
        "Operators may only use secrets granted to them."
    )
    assert decide(world.principals["anonymous"], Action.RUN_READ, tomas_run).status == 401


def test_the_selectors_and_the_launch_form_ask_restrict(world: World) -> None:
    admin, reader = world.principals["admin"], world.principals["admin_read_token"]
    assert set(selectors.dead_letters(admin).values_list("name", flat=True)) == {"d"}
    assert not selectors.dead_letters(reader).exists()
    assert not selectors.visible_runs(world.principals["anonymous"]).exists()
    assert usable_secret_names(world.principals["owner"].user) == ["BY_NAME", "BY_ROLE"]
    assert usable_secret_names(world.principals["viewer"].user) == []


def test_narrowing_a_model_without_a_row_rule_is_an_error(world: World) -> None:
    with pytest.raises(LookupError, match=r"no rule for auth\.User"):
        restrict(world.principals["owner"], Action.RUN_CANCEL, User.objects.all())


def test_the_system_check_catches_a_row_rule_naming_no_model_or_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert policy.check_row_rules() == []
    monkeypatch.setitem(policy.ROW_RULES, "runs.nothing", policy.RowRule(owner="owner"))
    monkeypatch.setitem(policy.ROW_RULES, "runs.artifact", policy.RowRule(owner="run__proprietor"))
    problems = policy.check_row_rules()
    assert sorted(str(problem.id) for problem in problems) == ["accounts.E001", "accounts.E002"]
    assert all(isinstance(problem, checks.Error) for problem in problems)
    assert any("proprietor" in problem.msg for problem in problems)
