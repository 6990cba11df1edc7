"""A request whose pooled connection died before it wrote anything is repeated once on a fresh
connection; a request that wrote, a failing query and a real outage keep their 503."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import OperationalError, connection, transaction
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from psycopg_pool import PoolTimeout
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from ops.middleware import DatabaseUnavailableMiddleware, _held_connection_died
from runs.api.serializers import RunSerializer
from runs.models import Run
from tests.conftest import make_user


def _kill_idle_backends() -> int:
    """Terminate every idle backend of the test database but the caller's (as a restart would)."""
    db = settings.DATABASES["default"]
    conninfo = (
        f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
    )
    with psycopg.connect(conninfo, autocommit=True) as control:
        row = control.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state = 'idle' AND backend_type = 'client backend'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def api(transactional_db: Any) -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {do_issue_token(make_user('olivia', 'operator')).plaintext}"
    )
    return client


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a pooled Postgres connection")
def test_reads_and_launches_survive_their_pooled_connection_being_killed(api: APIClient) -> None:
    assert api.get("/api/v1/runs/").status_code == 200  # the pool holds a connection now
    connection.close()  # ours goes back to the pool too, idle
    assert _kill_idle_backends() >= 1
    assert api.get("/api/v1/runs/").status_code == 200
    connection.close()
    assert _kill_idle_backends() >= 1
    launched = api.post("/api/v1/runs/", {"name": "k", "program": "scripted", "params": {}}, format="json")
    assert launched.status_code == 201, launched.content
    assert Run.objects.filter(name="k").count() == 1  # repeated, not duplicated


def _wrapped(cause: BaseException) -> OperationalError:
    error = OperationalError(str(cause))
    error.__cause__ = cause
    return error


def test_only_a_lost_connection_is_worth_repeating() -> None:
    assert _held_connection_died(_wrapped(psycopg.errors.AdminShutdown("terminating connection")))
    assert _held_connection_died(_wrapped(psycopg.OperationalError("server closed the connection")))
    assert _held_connection_died(_wrapped(psycopg.InterfaceError("the connection is closed")))
    assert not _held_connection_died(_wrapped(PoolTimeout("couldn't get a connection")))  # an outage
    assert not _held_connection_died(_wrapped(psycopg.errors.QueryCanceled("statement timeout")))
    assert not _held_connection_died(_wrapped(psycopg.errors.DeadlockDetected("deadlock")))
    assert not _held_connection_died(None)


class _KillOwnBackend:
    """Execute wrapper: once `fires_after(sql, connection)` says so, terminate this request's own
    backend from another connection (as a restart or a proxy's sweep would), once."""

    def __init__(self, fires_after: Any) -> None:
        self.fires_after = fires_after
        self.fired = False

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        wrapper = context["connection"]
        if not self.fired and self.fires_after(sql, wrapper):
            self.fired = True
            pid = wrapper.connection.info.backend_pid
            db = settings.DATABASES["default"]
            conninfo = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
            with psycopg.connect(conninfo, autocommit=True) as control:
                control.execute("SELECT pg_terminate_backend(%s)", [pid])
        return result


def _launch(api: APIClient, name: str) -> Any:
    return api.post("/api/v1/runs/", {"name": name, "program": "scripted", "params": {}}, format="json")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a pooled Postgres connection")
def test_a_launch_killed_after_its_insert_but_before_commit_is_repeated(api: APIClient) -> None:
    """The run's INSERT ran, then the backend died inside the transaction: Postgres rolled it
    back (txid_status 'aborted'), so the repeat creates the run once. Old rule: 503, no run."""
    killer = _KillOwnBackend(lambda sql, wrapper: sql.lstrip().upper().startswith('INSERT INTO "RUNS_RUN"'))
    with connection.execute_wrapper(killer):
        launched = _launch(api, "killed-mid-transaction")
    assert killer.fired
    assert launched.status_code == 201, launched.content
    assert Run.objects.filter(name="killed-mid-transaction").count() == 1


def _terminate(pid: int) -> None:
    db = settings.DATABASES["default"]
    conninfo = (
        f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
    )
    with psycopg.connect(conninfo, autocommit=True) as control:
        control.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a pooled Postgres connection")
@pytest.mark.parametrize("commits", [True, False])
def test_a_request_is_repeated_only_when_its_transactions_rolled_back(
    transactional_db: Any, commits: bool
) -> None:
    """A view writes in a transaction, its backend is killed (after COMMIT, or before it), and the
    next statement fails. Committed: 503, not repeated (the row exists once). Rolled back: repeated
    once on a fresh connection, and the row exists once."""
    calls: list[int] = []
    middleware: DatabaseUnavailableMiddleware

    def view(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        if len(calls) > 1:
            User.objects.create(username="written-by-the-repeat")
            return HttpResponse(status=201)
        try:
            with transaction.atomic():
                User.objects.create(username="written-by-the-first-try")
                if not commits:
                    _terminate(connection.connection.info.backend_pid)
                    User.objects.count()  # fails: the backend is gone, the transaction with it
            _terminate(connection.connection.info.backend_pid)
            User.objects.count()
        except OperationalError as error:
            response = middleware.process_exception(request, error)
            assert response is not None
            return response
        return HttpResponse(status=200)

    middleware = DatabaseUnavailableMiddleware(view)
    response = middleware(
        RequestFactory().post("/api/v1/anything/", data=b"{}", content_type="application/json")
    )
    if commits:
        assert (response.status_code, len(calls)) == (503, 1)
        assert list(User.objects.values_list("username", flat=True)) == ["written-by-the-first-try"]
    else:
        assert (response.status_code, len(calls)) == (201, 2)
        assert list(User.objects.values_list("username", flat=True)) == ["written-by-the-repeat"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a pooled Postgres connection")
@pytest.mark.parametrize(("killed_tries", "status", "calls"), [(2, 200, 3), (3, 503, 3)])
def test_a_read_whose_repeat_also_loses_its_connection_is_tried_at_most_three_times(
    transactional_db: Any, killed_tries: int, status: int, calls: int
) -> None:
    """Connections die together (a restart, a proxy's sweep): the repeat's may die too."""
    seen: list[int] = []
    middleware: DatabaseUnavailableMiddleware

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(1)
        try:
            if len(seen) <= killed_tries:
                connection.ensure_connection()
                _terminate(connection.connection.info.backend_pid)
            User.objects.count()
        except OperationalError as error:
            response = middleware.process_exception(request, error)
            assert response is not None
            return response
        return HttpResponse(status=200)

    middleware = DatabaseUnavailableMiddleware(view)
    response = middleware(RequestFactory().get("/api/v1/runs/"))
    connection.close()  # as request_finished does: the last try's connection may be the dead one
    assert (response.status_code, len(seen)) == (status, calls)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a pooled Postgres connection")
def test_a_launch_whose_connection_dies_after_its_commit_is_repeated_and_finds_its_run(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run committed, then the connection died while the response was built: the repeat
    returns that run (201) instead of a 503 the client would retry into a second run."""
    calls: list[int] = []
    to_representation = RunSerializer.to_representation

    def dies_once(self: RunSerializer, instance: Any) -> Any:
        calls.append(instance.pk)
        if len(calls) == 1:
            _terminate(connection.connection.info.backend_pid)
        return to_representation(self, instance)

    monkeypatch.setattr(RunSerializer, "to_representation", dies_once)
    launched = _launch(api, "killed-after-commit")
    assert launched.status_code == 201, launched.content
    assert len(calls) == 2 and calls[0] == calls[1]  # the repeat found the first try's run
    assert list(Run.objects.filter(name="killed-after-commit").values_list("pk", flat=True)) == [calls[0]]
    assert launched.json()["id"] == calls[0]
