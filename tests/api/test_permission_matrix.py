"""The permission matrix: every URL, method and role, with the answer each must get.

Deny by default: a URL (REST, page, download, websocket) that has no row here fails
`test_every_url_has_a_row`, so a new endpoint cannot ship without a decision about who may use it.
Each row runs every role inside one test transaction, rolled back to a savepoint between roles, so
a cancel by one role does not change what the next one sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.routing import URLRouter
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from safetensors.numpy import save_file

from accounts.models import ApiToken, UserRole
from accounts.policy import RULES, Action
from accounts.tokens import do_issue_token
from accounts.websocket import TokenOrSessionAuthMiddleware
from audit import chain
from audit.models import AuditRecord
from controlplane.routing import websocket_urlpatterns
from runs.models import Artifact, Run, RunStatus
from runs.storage import artifact_path
from tests.fleet.helpers import gpu_worker
from vault.services import do_create_secret

ROLES = ("anonymous", "viewer", "operator_owning", "operator_not_owning", "admin")
STRONG = "plum-orbit-candle-47-river"


Expected = int | frozenset[int]
# Readiness depends on the services, never on who asks: up or down, but never 401/403.
PROBE = frozenset({200, 503})


def matches(answers: dict[str, int], expect: tuple[Expected, ...]) -> bool:
    return all(
        answers[role] in wanted if isinstance(wanted, frozenset) else answers[role] == wanted
        for role, wanted in zip(ROLES, expect, strict=True)
    )


@dataclass(frozen=True)
class Row:
    name: str  # the URL's name, namespaced (`api:run-cancel`)
    method: str
    expect: tuple[Expected, Expected, Expected, Expected, Expected]  # in ROLES order
    target: str = ""  # which fixture object fills the URL's id
    query: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    form: bool = False  # send the body as a form (pages) rather than JSON
    kwargs: dict[str, str] = field(default_factory=dict)  # URL keywords that are not fixture ids


def r(name: str, method: str, *expect: Expected, **options: Any) -> Row:
    assert len(expect) == len(ROLES), name
    return Row(name, method, (expect[0], expect[1], expect[2], expect[3], expect[4]), **options)


READ = (401, 200, 200, 200, 200)
PAGE_READ = (302, 200, 200, 200, 200)
ADMIN_ONLY = (401, 403, 403, 403, 200)
PAGE_ADMIN = (302, 403, 403, 403, 200)

MATRIX: list[Row] = [
    # -- pages ---------------------------------------------------------------------------------
    r("run-list", "GET", *PAGE_READ),
    r("run-launch", "GET", 302, 403, 200, 200, 200),
    r("run-launch", "POST", 302, 403, 302, 302, 302, body={"program": "scripted", "name": "m"}, form=True),
    r("run-detail", "GET", *PAGE_READ, target="run"),
    r("run-fragments", "GET", *PAGE_READ, target="run"),
    r("run-clone-code", "POST", 302, 403, 302, 302, 302, target="run", form=True),
    r("run-compare", "GET", *PAGE_READ, query="ids={run}"),
    r("login", "GET", 200, 200, 200, 200, 200),
    r("login", "POST", 200, 200, 200, 200, 200, body={"username": "nobody", "password": "wrong"}, form=True),
    r("logout", "POST", 302, 302, 302, 302, 302, form=True),
    r("worker-page-list", "GET", *PAGE_READ),
    r("worker-page-drain", "POST", 302, 403, 403, 403, 302, target="worker", form=True),
    r("dead-letter-list", "GET", *PAGE_ADMIN),
    r("program-page-list", "GET", *PAGE_ADMIN),
    r("program-page-create", "GET", *PAGE_ADMIN),
    r(
        "program-page-create",
        "POST",
        302,
        403,
        403,
        403,
        302,
        body={"name": "matrixpage", "command": "/bin/true", "params_schema": "{}", "launcher": "direct"},
        form=True,
    ),
    r("program-page-edit", "GET", *PAGE_ADMIN, kwargs={"name": "scripted"}),
    r("program-page-retire", "POST", 302, 403, 403, 403, 302, kwargs={"name": "scripted"}, form=True),
    r("dead-letter-requeue-page", "POST", 302, 403, 403, 403, 302, target="dead_run", form=True),
    r("dead-letter-discard-page", "POST", 302, 403, 403, 403, 302, target="dead_run", form=True),
    r("account-tokens", "GET", *PAGE_READ),
    r("account-tokens", "POST", 302, 201, 201, 201, 201, body={"name": "m", "scopes": "read"}, form=True),
    r("account-token-revoke", "POST", 302, 404, 302, 404, 302, target="token", form=True),
    r("user-list", "GET", *PAGE_ADMIN),
    r(
        "user-list",
        "POST",
        302,
        403,
        403,
        403,
        302,
        body={"username": "newbie", "password": STRONG, "role": "viewer"},
        form=True,
    ),
    r("user-detail", "GET", *PAGE_ADMIN, target="user"),
    r(
        "user-change",
        "POST",
        302,
        403,
        403,
        403,
        302,
        target="user",
        body={"change": "role", "role": "viewer"},
        form=True,
    ),
    # -- public probes -------------------------------------------------------------------------
    r("healthz", "GET", 200, 200, 200, 200, 200),
    r("readyz", "GET", PROBE, PROBE, PROBE, PROBE, PROBE),
    r("prometheus-django-metrics", "GET", 200, 200, 200, 200, 200),
    # -- accounts ------------------------------------------------------------------------------
    r("api:schema", "GET", *READ),
    r("api:auth-token", "POST", 401, 401, 401, 401, 401, body={"username": "nobody", "password": "wrong"}),
    r("api:auth-whoami", "GET", *READ),
    r("api:token-list", "GET", *READ),
    r("api:token-list", "POST", 401, 201, 201, 201, 201, body={"name": "matrix"}),
    r("api:token-detail", "DELETE", 401, 404, 200, 404, 200, target="token"),
    r("api:user-list", "GET", *ADMIN_ONLY),
    r(
        "api:user-list",
        "POST",
        401,
        403,
        403,
        403,
        201,
        body={"username": "newbie", "password": STRONG, "role": "viewer"},
    ),
    r("api:user-detail", "GET", *ADMIN_ONLY, target="user"),
    r("api:user-detail", "PATCH", *ADMIN_ONLY, target="user", body={"role": "viewer"}),
    r("api:user-password", "POST", *ADMIN_ONLY, target="user", body={"password": STRONG}),
    # -- runs ----------------------------------------------------------------------------------
    r("api:run-list", "GET", *READ),
    r("api:run-list", "POST", 401, 403, 201, 201, 201, body={"name": "m", "program": "scripted"}),
    r("api:run-detail", "GET", *READ, target="run"),
    r("api:run-logs", "GET", *READ, target="run"),
    r("api:run-metrics", "GET", *READ, target="run", query="key=train/loss"),
    r("api:run-artifacts", "GET", *READ, target="run"),
    r("api:run-cancel", "POST", 401, 403, 202, 403, 202, target="run"),
    r("api:run-retry", "POST", 401, 403, 202, 403, 202, target="failed_run"),
    # Cloning launches a new run of one's own, like any launch; any run one may see.
    r("api:run-clone", "POST", 401, 403, 201, 201, 201, target="run"),
    r("api:snapshot-limits", "GET", 401, 403, 200, 200, 200),
    r("api:snapshot-detail", "GET", 401, 403, 404, 404, 404, kwargs={"sha256": "0" * 64}),
    # The body is not the archive its URL names: refused before anything is registered.
    r("api:snapshot-detail", "PUT", 401, 403, 400, 400, 400, kwargs={"sha256": "0" * 64}),
    # tracking mode: the owner (or an admin) reports into an external run; a body `{}` is one
    # malformed event, noted in its log
    r("api:run-report", "POST", 401, 403, 200, 403, 200, target="external_run", query="batch=1"),
    r(
        "api:run-artifact-upload",
        "PUT",
        401,
        403,
        400,
        403,
        400,
        target="external_run",
        kwargs={"name": "m.bin"},
    ),
    r("api:run-states", "GET", *READ, query="ids={run}"),
    r("api:program-list", "GET", *READ),
    r("api:program-detail", "GET", *READ, kwargs={"name": "scripted"}),
    r(
        "api:program-list",
        "POST",
        401,
        403,
        403,
        403,
        201,
        body={"name": "matrixprog", "command": ["/bin/true"]},
    ),
    r("api:program-detail", "PATCH", *ADMIN_ONLY, kwargs={"name": "scripted"}, body={"description": "m"}),
    r("api:program-retire", "POST", *ADMIN_ONLY, kwargs={"name": "scripted"}),
    r("api:program-restore", "POST", *ADMIN_ONLY, kwargs={"name": "scripted"}),
    # An admin may ask; /bin/true is no Python script, so the answer is a 400 naming `command`.
    r("api:program-infer-schema", "POST", 401, 403, 403, 403, 400, body={"command": ["/bin/true"]}),
    r("api:run-log-tail", "GET", *READ, target="run"),
    r("api:run-log-text", "GET", *READ, target="run"),
    r("api:run-charts", "GET", *READ, target="run"),
    r("api:run-metric-export", "GET", *READ, target="run", query="key=train/loss"),
    r("api:artifact-preview", "GET", *READ, target="artifact"),
    r("artifact-download", "GET", *READ, target="artifact"),
    # -- admin ---------------------------------------------------------------------------------
    r("api:dead-letter-list", "GET", *ADMIN_ONLY),
    r("api:dead-letter-requeue", "POST", 401, 403, 403, 403, 202, target="dead_run"),
    r("api:dead-letter-discard", "POST", 401, 403, 403, 403, 202, target="dead_run"),
    # -- fleet (fleet/api.py) ---------------------------------------------------------------------
    r("api:worker-list", "GET", *READ),
    r("api:worker-drain", "POST", 401, 403, 403, 403, 202, target="worker"),
    r("api:quota-list", "GET", *READ),
    r("api:quota-detail", "PATCH", *ADMIN_ONLY, target="user", body={"max_gpus": 2}),
    r("api:quota-detail", "PUT", *ADMIN_ONLY, target="user", body={"max_gpus": 2}),
    r("api:audit-list", "GET", *ADMIN_ONLY),
    r("api:audit-verify", "GET", *ADMIN_ONLY),
    r("api:audit-detail", "GET", *ADMIN_ONLY, target="audit"),
    r("audit-list", "GET", *PAGE_ADMIN),
    r("audit-verify", "GET", *PAGE_ADMIN),
    r("audit-detail", "GET", *PAGE_ADMIN, target="audit"),
    # -- secrets (admins) -------------------------------------------------------------------------
    r("secret-list", "GET", *PAGE_ADMIN),
    r("secret-create", "GET", *PAGE_ADMIN),
    r(
        "secret-create",
        "POST",
        302,
        403,
        403,
        403,
        302,
        body={"name": "MATRIX_NEW", "value": "matrix-value-123"},
        form=True,
    ),
    r("secret-edit", "GET", *PAGE_ADMIN, target="secret"),
    r(
        "secret-edit",
        "POST",
        302,
        403,
        403,
        403,
        302,
        target="secret",
        body={"value": "another-value-456"},
        form=True,
    ),
    r("secret-delete", "GET", *PAGE_ADMIN, target="secret"),
    r("secret-delete", "POST", 302, 403, 403, 403, 302, target="secret", form=True),
    r("api:secret-list", "GET", *ADMIN_ONLY),
    r(
        "api:secret-list",
        "POST",
        401,
        403,
        403,
        403,
        201,
        body={"name": "MATRIX_NEW", "value": "matrix-value-123"},
    ),
    r("api:secret-detail", "GET", *ADMIN_ONLY, target="secret"),
    r("api:secret-detail", "PATCH", *ADMIN_ONLY, target="secret", body={"value": "another-value-456"}),
    r("api:secret-detail", "DELETE", 401, 403, 403, 403, 204, target="secret"),
]

# Websocket routes, by path pattern: the close code a refused handshake gets, or "accept".
WEBSOCKET_MATRIX: dict[str, tuple[int | str, ...]] = {
    "ws/runs/<int:run_id>/": (4401, "accept", "accept", "accept", "accept"),
}

# The URL keyword each fixture object fills, per URL name (the rest use `pk`/`run_id` of a run).
KWARG_NAMES = ("pk", "run_id", "artifact_id", "token_id", "user_id", "name", "ref")


# -- the world every row runs against -------------------------------------------------------------


@dataclass
class World:
    users: dict[str, User | None]
    tokens: dict[str, str]
    ids: dict[str, int]


def _user(username: str, role: str) -> User:
    user = User.objects.create(username=username, is_staff=role == "admin", is_superuser=role == "admin")
    user.set_unusable_password()  # no hashing: sessions come from force_login, tokens from do_issue_token
    user.save()
    UserRole.objects.update_or_create(user=user, defaults={"role": role})
    return user


def build_world() -> World:
    owner = _user("olivia", "operator")
    users: dict[str, User | None] = {
        "anonymous": None,
        "viewer": _user("vera", "viewer"),
        "operator_owning": owner,
        "operator_not_owning": _user("tomas", "operator"),
        "admin": _user("ada", "admin"),
    }
    run = Run.objects.create(name="m", owner=owner, program="scripted", queue="matrix")
    failed = Run.objects.create(
        name="f", owner=owner, program="scripted", queue="matrix", status=RunStatus.FAILED
    )
    dead = Run.objects.create(
        name="d", owner=owner, program="scripted", queue="matrix", status=RunStatus.DEAD, attempt=1
    )
    external = Run.objects.create(
        name="e", owner=owner, kind="external", program="", queue="", status=RunStatus.RUNNING, attempt=1
    )
    key = f"{run.pk}/1/model.safetensors"
    path = artifact_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    import numpy as np

    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(path))
    artifact = Artifact.objects.create(
        run=run,
        attempt=1,
        name="model.safetensors",
        kind="model",
        size=path.stat().st_size,
        sha256="0" * 64,
        storage_key=key,
    )
    token = ApiToken.objects.get(pk=do_issue_token(owner, name="owned").token.pk)
    record = chain.record("matrix.seed", actor=owner)
    secret = do_create_secret(users["admin"], name="MATRIX_SECRET", value="matrix-value-123")
    tokens = {role: do_issue_token(user).plaintext for role, user in users.items() if user is not None}
    ids = {
        "run": run.pk,
        "failed_run": failed.pk,
        "external_run": external.pk,
        "dead_run": dead.pk,
        "worker": gpu_worker("matrix-worker", 1).pk,
        "artifact": artifact.pk,
        "token": token.pk,
        "user": owner.pk,
        "audit": record.pk,
        "secret": secret.pk,
    }
    return World(users, tokens, ids)


def url_for(row: Row, world: World) -> str:
    kwargs: dict[str, int] = {}
    if row.target:
        pattern = _patterns()[row.name]
        kwargs = {
            name: world.ids[row.target]
            for name in KWARG_NAMES
            if f"<{name}>" in pattern or f"<int:{name}>" in pattern
        }
    url = reverse(row.name, kwargs={**kwargs, **row.kwargs})
    return f"{url}?{row.query.format(**world.ids)}" if row.query else url


def call(client: Client, row: Row, url: str, headers: dict[str, str]) -> int:
    method = getattr(client, row.method.lower())
    if row.method == "GET":
        return int(method(url, **headers).status_code)
    if row.form:
        return int(method(url, row.body, **headers).status_code)
    return int(method(url, row.body, content_type="application/json", **headers).status_code)


def answers_by_role(row: Row, *, with_tokens: bool) -> tuple[str, dict[str, int]]:
    """Each role's status for `row`, by session or by bearer token, each request rolled back."""
    world = build_world()
    url = url_for(row, world)
    answers: dict[str, int] = {}
    for role in ROLES:
        client = Client()
        headers: dict[str, str] = {}
        user = world.users[role]
        if with_tokens and role in world.tokens:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {world.tokens[role]}"
        elif not with_tokens and user is not None:
            client.force_login(user)
        savepoint = transaction.savepoint()
        try:
            answers[role] = call(client, row, url, headers)
        finally:
            transaction.savepoint_rollback(savepoint)
    return url, answers


@pytest.mark.parametrize("row", MATRIX, ids=lambda row: f"{row.method} {row.name}")
def test_each_role_gets_the_expected_answer(db: Any, row: Row) -> None:
    url, answers = answers_by_role(row, with_tokens=False)
    assert matches(answers, row.expect), (url, answers, row.expect)


REST_ROWS = [row for row in MATRIX if row.name.startswith("api:") and row.name != "api:auth-token"]


@pytest.mark.parametrize("row", REST_ROWS, ids=lambda row: f"{row.method} {row.name}")
def test_tokens_get_the_same_answers_as_sessions(db: Any, row: Row) -> None:
    url, answers = answers_by_role(row, with_tokens=True)
    assert matches(answers, row.expect), (url, answers, row.expect)


@pytest.mark.django_db(transaction=True)
def test_the_run_websocket_follows_the_matrix() -> None:
    world = build_world()
    app = TokenOrSessionAuthMiddleware(URLRouter(websocket_urlpatterns))
    expected = WEBSOCKET_MATRIX["ws/runs/<int:run_id>/"]

    async def handshake(role: str) -> int | str:
        # channels.testing needs daphne; a bare ASGI handshake is all this needs.
        headers = (
            [(b"authorization", f"Bearer {world.tokens[role]}".encode())] if role in world.tokens else []
        )
        scope = {
            "type": "websocket",
            "path": f"/ws/runs/{world.ids['run']}/",
            "query_string": b"after=0",
            "headers": headers,
            "subprotocols": [],
        }
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "websocket.connect"})
        message = await communicator.receive_output(timeout=5)
        if message["type"] == "websocket.accept":
            # Refusals are accepted, then closed with their code (4401/4403/4404) so the client
            # can read it; an allowed socket's next message is its status frame.
            following = await communicator.receive_output(timeout=5)
            message = following if following["type"] == "websocket.close" else message
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await communicator.wait(timeout=5)
        return "accept" if message["type"] == "websocket.accept" else int(message["code"])

    answers = {role: async_to_sync(handshake)(role) for role in ROLES}
    assert answers == dict(zip(ROLES, expected, strict=True))


# -- completeness: deny by default ------------------------------------------------------------


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> dict[str, str]:
    found: dict[str, str] = {}
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            found.update(_walk(pattern.url_patterns, prefix + str(pattern.pattern), inner))
        elif isinstance(pattern, URLPattern) and pattern.name:
            found[f"{namespace}{pattern.name}"] = prefix + str(pattern.pattern)
        elif isinstance(pattern, URLPattern):
            raise AssertionError(f"unnamed URL {prefix}{pattern.pattern}: name it and give it a matrix row")
    return found


def _patterns() -> dict[str, str]:
    return _walk(get_resolver().url_patterns)


def _viewset_methods() -> dict[str, set[str]]:
    """For router URLs, the HTTP methods the route answers (from the viewset's action map)."""
    methods: dict[str, set[str]] = {}

    def walk(patterns: list[Any], namespace: str = "") -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace != "admin":
                    walk(
                        pattern.url_patterns,
                        f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace,
                    )
            elif getattr(pattern.callback, "actions", None):
                # HEAD answers as GET does (DRF routes it to the same action).
                methods[f"{namespace}{pattern.name}"] = {m.upper() for m in pattern.callback.actions} - {
                    "HEAD"
                }

    walk(get_resolver().url_patterns)
    return methods


def test_every_url_has_a_row() -> None:
    named = set(_patterns())
    covered = {row.name for row in MATRIX}
    assert named - covered == set(), f"URLs without a permission-matrix row: {sorted(named - covered)}"
    assert covered - named == set(), f"rows for URLs that no longer exist: {sorted(covered - named)}"


def test_every_method_of_every_api_route_has_a_row() -> None:
    rows = {(row.name, row.method) for row in MATRIX}
    missing = sorted(
        (name, method)
        for name, methods in _viewset_methods().items()
        for method in methods
        if (name, method) not in rows
    )
    assert missing == [], f"methods without a permission-matrix row: {missing}"


def test_every_websocket_route_has_a_row() -> None:
    routes = {str(pattern.pattern) for pattern in websocket_urlpatterns}
    assert routes == set(WEBSOCKET_MATRIX)


def test_every_action_has_a_rule() -> None:
    assert set(RULES) == set(Action)


def test_a_view_that_names_no_action_is_refused_even_to_admins(db: Any) -> None:
    from rest_framework.response import Response
    from rest_framework.test import APIRequestFactory, force_authenticate
    from rest_framework.views import APIView

    class Forgotten(APIView):
        def get(self, request: Any) -> Response:
            return Response({"secret": "data"})

    admin = _user("ada", "admin")
    request = APIRequestFactory().get("/forgotten/")
    force_authenticate(request, user=admin)
    response = Forgotten.as_view()(request)
    assert response.status_code == 403
    assert "secret" not in response.data


# -- token scopes on row actions --------------------------------------------------------------
# A token acts with its scopes, not its user's whole role: acting on other people's rows takes the
# admin scope as well as the admin role. An admin's `read` token sees what an admin sees, but
# revokes, cancels and retries only its own rows and touches no dead letter, secret, user or audit
# record. Every refusal is a 403 audited as `access.denied` with the token's prefix.

ADMIN_READ = ("admin", ("read",))
ADMIN_LAUNCH = ("admin", ("read", "launch"))
ADMIN_ALL = ("admin", ("read", "launch", "admin"))
OPERATOR_READ = ("operator_owning", ("read",))
OPERATOR_LAUNCH = ("operator_owning", ("read", "launch"))


@dataclass(frozen=True)
class ScopedRow:
    persona: str  # whose token: a role of ROLES
    scopes: tuple[str, ...]
    name: str
    method: str
    expect: int
    target: str = ""
    body: dict[str, Any] = field(default_factory=dict)


def s(persona: tuple[str, tuple[str, ...]], name: str, method: str, expect: int, **options: Any) -> ScopedRow:
    return ScopedRow(persona[0], persona[1], name, method, expect, **options)


SCOPED_MATRIX: list[ScopedRow] = [
    # an admin's read-only token: sees everything an admin sees ...
    s(ADMIN_READ, "api:token-list", "GET", 200),
    s(ADMIN_READ, "api:run-detail", "GET", 200, target="run"),
    # ... but acts on no one else's row
    s(ADMIN_READ, "api:token-detail", "DELETE", 403, target="token"),  # olivia's token
    s(ADMIN_READ, "api:run-cancel", "POST", 403, target="run"),
    s(ADMIN_READ, "api:run-retry", "POST", 403, target="failed_run"),
    s(ADMIN_READ, "api:dead-letter-list", "GET", 403),
    s(ADMIN_READ, "api:dead-letter-requeue", "POST", 403, target="dead_run"),
    s(ADMIN_READ, "api:dead-letter-discard", "POST", 403, target="dead_run"),
    s(ADMIN_READ, "api:secret-detail", "DELETE", 403, target="secret"),
    s(ADMIN_READ, "api:secret-detail", "PATCH", 403, target="secret", body={"value": "another-value-456"}),
    s(ADMIN_READ, "api:user-detail", "PATCH", 403, target="user", body={"role": "viewer"}),
    s(ADMIN_READ, "api:user-password", "POST", 403, target="user", body={"password": STRONG}),
    s(ADMIN_READ, "api:audit-list", "GET", 403),
    # an admin's launch token acts like an operator's: other people's runs and tokens need `admin`
    s(ADMIN_LAUNCH, "api:run-cancel", "POST", 403, target="run"),
    s(ADMIN_LAUNCH, "api:run-retry", "POST", 403, target="failed_run"),
    s(ADMIN_LAUNCH, "api:token-detail", "DELETE", 403, target="token"),
    s(ADMIN_ALL, "api:token-detail", "DELETE", 200, target="token"),
    s(ADMIN_ALL, "api:run-cancel", "POST", 202, target="run"),
    # the owner: a launch token cancels and retries its runs, a read token does not
    s(OPERATOR_LAUNCH, "api:run-cancel", "POST", 202, target="run"),
    s(OPERATOR_LAUNCH, "api:run-retry", "POST", 202, target="failed_run"),
    s(OPERATOR_READ, "api:run-cancel", "POST", 403, target="run"),
    s(OPERATOR_READ, "api:run-retry", "POST", 403, target="failed_run"),
    s(OPERATOR_READ, "api:token-detail", "DELETE", 200, target="token"),  # its own token
]


@pytest.mark.parametrize(
    "row", SCOPED_MATRIX, ids=lambda row: f"{row.persona}[{','.join(row.scopes)}] {row.method} {row.name}"
)
def test_a_tokens_scopes_narrow_what_it_may_do_on_each_row(db: Any, row: ScopedRow) -> None:
    world = build_world()
    user = world.users[row.persona]
    assert user is not None
    issued = do_issue_token(user, scopes=list(row.scopes))
    plain = Row(row.name, row.method, READ, target=row.target, body=row.body)
    url = url_for(plain, world)
    answer = call(Client(), plain, url, {"HTTP_AUTHORIZATION": f"Bearer {issued.plaintext}"})
    assert answer == row.expect, (url, answer, row.expect)
    denials = AuditRecord.objects.filter(action="access.denied", details__token_prefix=issued.token.prefix)
    assert denials.exists() == (row.expect == 403), list(denials.values("details"))
    if row.name == "api:token-detail" and row.expect == 403:
        assert ApiToken.objects.get(pk=world.ids["token"]).revoked_at is None
