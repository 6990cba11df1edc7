"""A request whose pooled connection died before it wrote anything is repeated once on a fresh
connection; a request that wrote, a failing query and a real outage keep their 503."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError, connection
from psycopg_pool import PoolTimeout
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from ops.middleware import _held_connection_died
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
